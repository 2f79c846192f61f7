/**
 * The Zephyr paper's radar chart: a spoke per category, a polygon per model. Drawn with Vega
 * (a Vega spec rendered headless to SVG: no browser, no canvas) and rasterised to PNG with resvg
 * (its WebAssembly build, so nothing native is installed) using DejaVu Sans from the
 * dejavu-fonts-ttf package, so the PNG's text looks the same on every machine.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

import type * as vega from 'vega';

import { writeFileAtomic } from '../io/atomic.js';

const require = createRequire(import.meta.url);

export interface RadarSeries {
  model: string;
  /** Score per category (null: none, drawn at the centre). */
  values: Record<string, number | null>;
}

export interface RadarOptions {
  categories: string[];
  series: RadarSeries[];
  /** The outer ring's value (10 for MT-Bench scores, 1 for win rates). */
  max: number;
  title?: string;
}

const SIZE = 420;

/** The Vega spec of a radar chart (exported for tests and for users who restyle it). */
export function radarSpec(options: RadarOptions): vega.Spec {
  const rows = options.series.flatMap((s) => options.categories.map((category) => ({ model: s.model, category, score: s.values[category] ?? 0 })));
  const rings = [0.2, 0.4, 0.6, 0.8, 1].map((f) => f * options.max);
  const angle = "scale('angular', datum.category)";
  const n = Math.max(1, options.categories.length);
  return {
    $schema: 'https://vega.github.io/schema/vega/v6.json',
    description: options.title ?? 'radar chart',
    width: SIZE,
    height: SIZE,
    padding: { left: 110, right: 190, top: 100, bottom: 60 },
    autosize: { type: 'none', contains: 'content' },
    background: 'white',
    title: options.title ? { text: options.title, offset: 30, fontSize: 16 } : undefined,
    signals: [{ name: 'radius', update: 'width / 2' }],
    data: [
      { name: 'table', values: rows },
      { name: 'keys', values: options.categories.map((category) => ({ category })) },
      { name: 'rings', values: rings.map((value) => ({ value })) },
    ],
    scales: [
      // Point positions (i + 0.5) * 2pi / n, shifted so that the first category points up.
      { name: 'angular', type: 'point', range: { signal: `[-PI / 2 - PI / ${n}, 3 * PI / 2 - PI / ${n}]` }, padding: 0.5, domain: options.categories },
      { name: 'radial', type: 'linear', range: { signal: '[0, radius]' }, zero: true, nice: false, domain: [0, options.max] },
      { name: 'color', type: 'ordinal', domain: options.series.map((s) => s.model), range: { scheme: 'category10' } },
    ],
    encode: { enter: { x: { signal: 'radius' }, y: { signal: 'radius' } } },
    legends: [{ fill: 'color', stroke: 'color', orient: 'none', legendX: { signal: 'radius + 60' }, legendY: { signal: '-radius' }, title: 'model', labelFontSize: 12, titleFontSize: 12 }],
    marks: [
      {
        type: 'group',
        name: 'ring-lines',
        from: { facet: { data: 'rings', name: 'ring', groupby: ['value'] } },
        marks: [
          {
            type: 'line',
            from: { data: 'keys' },
            encode: {
              enter: {
                interpolate: { value: 'linear-closed' },
                x: { signal: `scale('radial', parent.value) * cos(${angle})` },
                y: { signal: `scale('radial', parent.value) * sin(${angle})` },
                stroke: { value: '#cccccc' },
                strokeWidth: { value: 1 },
              },
            },
          },
        ],
      },
      {
        type: 'text',
        name: 'ring-labels',
        from: { data: 'rings' },
        encode: { enter: { x: { value: 3 }, y: { signal: "-scale('radial', datum.value)" }, text: { field: 'value' }, fill: { value: '#888888' }, fontSize: { value: 10 }, baseline: { value: 'bottom' } } },
      },
      {
        type: 'rule',
        name: 'spokes',
        from: { data: 'keys' },
        encode: { enter: { x: { value: 0 }, y: { value: 0 }, x2: { signal: `radius * cos(${angle})` }, y2: { signal: `radius * sin(${angle})` }, stroke: { value: '#cccccc' }, strokeWidth: { value: 1 } } },
      },
      {
        type: 'group',
        name: 'models',
        from: { facet: { data: 'table', name: 'facet', groupby: ['model'] } },
        marks: [
          {
            type: 'line',
            name: 'polygon',
            from: { data: 'facet' },
            encode: {
              enter: {
                interpolate: { value: 'linear-closed' },
                x: { signal: `scale('radial', datum.score) * cos(${angle})` },
                y: { signal: `scale('radial', datum.score) * sin(${angle})` },
                stroke: { scale: 'color', field: 'model' },
                strokeWidth: { value: 2 },
                fill: { scale: 'color', field: 'model' },
                fillOpacity: { value: 0.08 },
                description: { field: 'model' },
              },
            },
          },
        ],
      },
      {
        type: 'text',
        name: 'category-labels',
        from: { data: 'keys' },
        encode: {
          enter: {
            x: { signal: `(radius + 10) * cos(${angle})` },
            y: { signal: `(radius + 10) * sin(${angle})` },
            text: { field: 'category' },
            align: [{ test: `abs(cos(${angle})) < 0.2`, value: 'center' }, { test: `cos(${angle}) < 0`, value: 'right' }, { value: 'left' }],
            baseline: [{ test: `sin(${angle}) > 0.2`, value: 'top' }, { test: `sin(${angle}) < -0.2`, value: 'bottom' }, { value: 'middle' }],
            fontSize: { value: 13 },
            fontWeight: { value: 'bold' },
            fill: { value: 'black' },
          },
        },
      },
    ],
  } as vega.Spec;
}

/** The chart as SVG text. */
export async function radarSvg(options: RadarOptions): Promise<string> {
  // Loaded on first use: Vega takes a while to import, and only charts need it.
  const vega = await import('vega');
  const view = new vega.View(vega.parse(radarSpec(options)), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

let wasmReady: Promise<void> | null = null;
let fonts: Uint8Array[] | null = null;

/** An SVG rasterised to PNG at `scale` x its size, on white. */
export async function svgToPng(svg: string, scale = 2): Promise<Uint8Array> {
  const { initWasm, Resvg } = await import('@resvg/resvg-wasm');
  wasmReady ??= initWasm(readFileSync(require.resolve('@resvg/resvg-wasm/index_bg.wasm')));
  await wasmReady;
  fonts ??= ['DejaVuSans.ttf', 'DejaVuSans-Bold.ttf'].map((name) => readFileSync(require.resolve(`dejavu-fonts-ttf/ttf/${name}`)));
  const renderer = new Resvg(svg, {
    background: 'white',
    fitTo: { mode: 'zoom', value: scale },
    font: { fontBuffers: fonts, loadSystemFonts: false, defaultFontFamily: 'DejaVu Sans', sansSerifFamily: 'DejaVu Sans' },
  });
  try {
    const image = renderer.render();
    try {
      return image.asPng();
    } finally {
      image.free();
    }
  } finally {
    renderer.free();
  }
}

/** Writes `<base>.svg` and `<base>.png` (each atomically); returns their paths. */
export async function writeChart(base: string, svg: string): Promise<{ svg: string; png: string }> {
  const png = await svgToPng(svg);
  writeFileAtomic(`${base}.svg`, svg);
  writeFileAtomic(`${base}.png`, png);
  return { svg: `${base}.svg`, png: `${base}.png` };
}
