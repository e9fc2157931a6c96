/**
 * 16-bit PCM WAV decoding and an energy-based silence detector. No dependency: a RIFF header
 * and one loop over the samples.
 */
import { ErrorCode, MnemoError } from '../core/errors.ts';

/** Decoded audio: interleaved 16-bit samples. */
export interface Pcm {
  sampleRate: number;
  channels: number;
  samples: Int16Array;
}

function bad(message: string): MnemoError {
  return new MnemoError(ErrorCode.InvalidRequest, `audio_wav_base64: ${message}`);
}

/**
 * Reads a RIFF/WAVE file of 16-bit PCM (format 1), any rate and channel count.
 * @throws MnemoError `invalid_request` naming what is wrong
 */
export function parseWav(wav: Buffer): Pcm {
  if (wav.length < 12 || wav.toString('ascii', 0, 4) !== 'RIFF') {
    throw bad('not a RIFF file');
  }
  if (wav.toString('ascii', 8, 12) !== 'WAVE') {
    throw bad('not a WAVE file');
  }
  let offset = 12;
  let format: { channels: number; sampleRate: number; bits: number; tag: number } | undefined;
  while (offset + 8 <= wav.length) {
    const id = wav.toString('ascii', offset, offset + 4);
    const size = wav.readUInt32LE(offset + 4);
    const body = offset + 8;
    if (body + size > wav.length && id !== 'data') {
      throw bad(`chunk ${JSON.stringify(id)} runs past the end of the file`);
    }
    if (id === 'fmt ') {
      if (size < 16) {
        throw bad('fmt chunk too short');
      }
      format = {
        tag: wav.readUInt16LE(body),
        channels: wav.readUInt16LE(body + 2),
        sampleRate: wav.readUInt32LE(body + 4),
        bits: wav.readUInt16LE(body + 14),
      };
    } else if (id === 'data') {
      if (format === undefined) {
        throw bad('data chunk before the fmt chunk');
      }
      if (format.tag !== 1 || format.bits !== 16) {
        throw bad(`only 16-bit PCM is supported (format ${format.tag}, ${format.bits} bits)`);
      }
      if (format.channels < 1 || format.sampleRate < 1) {
        throw bad('no channels or no sample rate');
      }
      // A streamed WAV may declare a larger data chunk than it holds: read what is there.
      const end = Math.min(wav.length, body + size);
      const count = Math.floor((end - body) / 2);
      const samples = new Int16Array(count);
      for (let i = 0; i < count; i++) {
        samples[i] = wav.readInt16LE(body + i * 2);
      }
      return { sampleRate: format.sampleRate, channels: format.channels, samples };
    }
    offset = body + size + (size % 2); // chunks are padded to even sizes
  }
  throw bad('no data chunk');
}

/** Default threshold: frames quieter than this (dBFS, RMS) are silence. */
export const SILENCE_DBFS = -45;

/**
 * True when no 20 ms frame of the audio is louder than `thresholdDbfs` (RMS over all
 * channels). Empty audio is silent.
 */
export function isSilent(pcm: Pcm, thresholdDbfs = SILENCE_DBFS): boolean {
  const frame = Math.max(1, Math.round(pcm.sampleRate * 0.02) * pcm.channels);
  const limit = (10 ** (thresholdDbfs / 20) * 32768) ** 2; // mean square at the threshold
  for (let start = 0; start < pcm.samples.length; start += frame) {
    const end = Math.min(pcm.samples.length, start + frame);
    let sum = 0;
    for (let i = start; i < end; i++) {
      const v = pcm.samples[i] ?? 0;
      sum += v * v;
    }
    if (sum / (end - start) > limit) {
      return false;
    }
  }
  return true;
}

/** Builds a 16-bit mono PCM WAV file (tests, benchmarks, tools). */
export function encodeWav(samples: Int16Array, sampleRate: number): Buffer {
  const data = samples.length * 2;
  const out = Buffer.alloc(44 + data);
  out.write('RIFF', 0, 'ascii');
  out.writeUInt32LE(36 + data, 4);
  out.write('WAVE', 8, 'ascii');
  out.write('fmt ', 12, 'ascii');
  out.writeUInt32LE(16, 16);
  out.writeUInt16LE(1, 20); // PCM
  out.writeUInt16LE(1, 22); // mono
  out.writeUInt32LE(sampleRate, 24);
  out.writeUInt32LE(sampleRate * 2, 28);
  out.writeUInt16LE(2, 32);
  out.writeUInt16LE(16, 34);
  out.write('data', 36, 'ascii');
  out.writeUInt32LE(data, 40);
  for (let i = 0; i < samples.length; i++) {
    out.writeInt16LE(samples[i] ?? 0, 44 + i * 2);
  }
  return out;
}
