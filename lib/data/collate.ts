/**
 * Micro-batches for the native model (lib/data/batch.ts): every document laid end to end, no
 * padding, position ids restarting per document, cuSeqlens marking documents, and targets
 * shifted here (`targets[t]` = the label of token t+1 of the same document, -100 at a
 * document's last token). This is TRL's padding-free collation (DataCollatorForLanguageModeling
 * with `padding_free`, which sets the label at each document start to -100) with the shift that
 * transformers does inside the model done once, here.
 *
 * SFT: an unpacked example is one document, a packed row holds several. DPO: prompt+chosen
 * documents of all pairs, then prompt+rejected in the same order, the prompt's tokens never
 * targets (TRL's completion_mask, shifted the same way).
 */
import { IGNORE_INDEX, type PreferenceBatch, type TokenBatch } from './batch.js';
import type { PreferencePair } from './dpo-tokenize.js';
import type { PackedRow } from './packing.js';
import type { SftExample } from './sft-examples.js';

/** A document: its ids and unshifted labels (-100: the token is not predicted). */
interface Document {
  ids: Int32Array;
  labels: Int32Array;
}

function collateDocuments(documents: Document[]): TokenBatch {
  let total = 0;
  for (const document of documents) total += document.ids.length;
  const inputIds = new Int32Array(total);
  const positionIds = new Int32Array(total);
  const targets = new Int32Array(total);
  const cuSeqlens = new Int32Array(documents.length + 1);
  let offset = 0;
  documents.forEach((document, d) => {
    const length = document.ids.length;
    inputIds.set(document.ids, offset);
    for (let t = 0; t < length; t++) positionIds[offset + t] = t;
    targets.set(document.labels.subarray(1), offset);
    if (length > 0) targets[offset + length - 1] = IGNORE_INDEX;
    offset += length;
    cuSeqlens[d + 1] = offset;
  });
  return { inputIds, positionIds, targets, cuSeqlens };
}

function isPacked(item: SftExample | PackedRow): item is PackedRow {
  return 'seqLengths' in item;
}

function documentsOf(item: SftExample | PackedRow): Document[] {
  if (!isPacked(item)) return [{ ids: item.inputIds, labels: item.labels ?? item.inputIds }];
  const documents: Document[] = [];
  let offset = 0;
  for (const length of item.seqLengths) {
    documents.push({ ids: item.inputIds.subarray(offset, offset + length), labels: item.labels.subarray(offset, offset + length) });
    offset += length;
  }
  return documents;
}

/** SFT micro-batch: unpacked examples (one document each) or packed rows (several). */
export function collateSft(items: (SftExample | PackedRow)[]): TokenBatch {
  return collateDocuments(items.flatMap(documentsOf));
}

function preferenceDocument(promptIds: Int32Array, completionIds: Int32Array): Document {
  const ids = new Int32Array(promptIds.length + completionIds.length);
  ids.set(promptIds);
  ids.set(completionIds, promptIds.length);
  const labels = ids.slice();
  labels.fill(IGNORE_INDEX, 0, promptIds.length);
  return { ids, labels };
}

/** DPO micro-batch: chosen documents of every pair, then the rejected ones, for one forward pass. */
export function collatePreference(pairs: PreferencePair[]): PreferenceBatch {
  const chosen = pairs.map((pair) => preferenceDocument(pair.promptIds, pair.chosenIds));
  const rejected = pairs.map((pair) => preferenceDocument(pair.promptIds, pair.rejectedIds));
  return { ...collateDocuments([...chosen, ...rejected]), pairs: pairs.length };
}
