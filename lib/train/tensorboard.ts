/**
 * TensorBoard event files, as torch's SummaryWriter writes them for HF Trainer's
 * TensorBoardCallback: `events.out.tfevents.<time>.<host>.<pid>.0` in the log folder, a TFRecord
 * stream of `tensorflow.Event` protos (the first holds `file_version: "brain.Event:2"`; each later
 * one a `Summary` of scalars or text at a step).
 *
 * The protos are encoded by protobufjs from the message definitions below (the fields TensorBoard
 * reads, with tensorflow's field numbers, from tensorflow/core/util/event.proto and
 * tensorflow/core/framework/{summary,tensor,tensor_shape}.proto); the checksum is
 * @aws-crypto/crc32c. What is written by hand is the TFRecord framing (eight bytes of length,
 * masked CRC-32C of the length, the data, masked CRC-32C of the data).
 */
import { appendFileSync, closeSync, fsyncSync, mkdirSync, openSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';

import { crc32c } from '@aws-crypto/crc32c';
import protobuf from 'protobufjs';

const schema = protobuf.Root.fromJSON({
  nested: {
    tensorflow: {
      nested: {
        Event: {
          fields: {
            wall_time: { type: 'double', id: 1 },
            step: { type: 'int64', id: 2 },
            file_version: { type: 'string', id: 3 },
            summary: { type: 'Summary', id: 5 },
          },
          oneofs: { what: { oneof: ['file_version', 'summary'] } },
        },
        Summary: {
          fields: { value: { rule: 'repeated', type: 'Value', id: 1 } },
          nested: {
            Value: {
              fields: {
                tag: { type: 'string', id: 1 },
                simple_value: { type: 'float', id: 2 },
                tensor: { type: 'TensorProto', id: 8 },
                metadata: { type: 'SummaryMetadata', id: 9 },
              },
              // Members of a oneof are written even at 0 (a plain proto3 float at 0 is not).
              oneofs: { value: { oneof: ['simple_value', 'tensor'] } },
            },
          },
        },
        SummaryMetadata: {
          fields: { plugin_data: { type: 'PluginData', id: 1 } },
          nested: { PluginData: { fields: { plugin_name: { type: 'string', id: 1 }, content: { type: 'bytes', id: 2 } } } },
        },
        TensorProto: {
          fields: {
            dtype: { type: 'int32', id: 1 },
            tensor_shape: { type: 'TensorShapeProto', id: 2 },
            string_val: { rule: 'repeated', type: 'bytes', id: 8 },
          },
        },
        TensorShapeProto: {
          fields: { dim: { rule: 'repeated', type: 'Dim', id: 2 } },
          nested: { Dim: { fields: { size: { type: 'int64', id: 1 } } } },
        },
      },
    },
  },
});
const EventMessage = schema.lookupType('tensorflow.Event');
/** tensorflow.DataType DT_STRING. */
const DT_STRING = 7;

/** TFRecord's masked CRC-32C (a CRC of data that holds CRCs is weak; the mask avoids that). */
function maskedCrc32c(data: Uint8Array): number {
  const crc = crc32c(data);
  return (((crc >>> 15) | (crc << 17)) + 0xa282ead8) >>> 0;
}

/** One TFRecord: length (u64 LE), its masked CRC (u32 LE), the data, the data's masked CRC. */
export function tfRecord(data: Uint8Array): Buffer {
  const header = Buffer.alloc(12);
  header.writeBigUInt64LE(BigInt(data.length), 0);
  header.writeUInt32LE(maskedCrc32c(header.subarray(0, 8)), 8);
  const footer = Buffer.alloc(4);
  footer.writeUInt32LE(maskedCrc32c(data), 0);
  return Buffer.concat([header, data, footer]);
}

/** torch's default run folder name under `runs/`: `%b%d_%H-%M-%S_<host>` in local time. */
export function defaultRunName(now = new Date()): string {
  const month = now.toLocaleString('en-US', { month: 'short' });
  const pad = (n: number): string => String(n).padStart(2, '0');
  return `${month}${pad(now.getDate())}_${pad(now.getHours())}-${pad(now.getMinutes())}-${pad(now.getSeconds())}_${hostname()}`;
}

/** Appends events to one event file; each `flush` makes what was written durable. */
export class EventFileWriter {
  readonly path: string;
  private pending: Buffer[] = [];

  constructor(logDir: string) {
    mkdirSync(logDir, { recursive: true });
    const seconds = Math.floor(Date.now() / 1000);
    this.path = join(logDir, `events.out.tfevents.${String(seconds).padStart(10, '0')}.${hostname()}.${process.pid}.0`);
    this.write({ wall_time: Date.now() / 1000, file_version: 'brain.Event:2' });
    this.flush();
  }

  addScalar(tag: string, value: number, step: number): void {
    this.write({ wall_time: Date.now() / 1000, step, summary: { value: [{ tag, simple_value: value }] } });
  }

  /** Text as the text plugin reads it: a one-element string tensor (SummaryWriter.add_text). */
  addText(tag: string, text: string, step = 0): void {
    const tensor = { dtype: DT_STRING, tensor_shape: { dim: [{ size: 1 }] }, string_val: [Buffer.from(text, 'utf8')] };
    const metadata = { plugin_data: { plugin_name: 'text' } };
    this.write({ wall_time: Date.now() / 1000, step, summary: { value: [{ tag, tensor, metadata }] } });
  }

  flush(): void {
    if (this.pending.length === 0) return;
    appendFileSync(this.path, Buffer.concat(this.pending));
    this.pending = [];
    const fd = openSync(this.path, 'r+');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  private write(event: Record<string, unknown>): void {
    this.pending.push(tfRecord(EventMessage.encode(EventMessage.fromObject(event)).finish()));
  }
}
