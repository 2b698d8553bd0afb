// The capture processor: mixes the microphone's channels to mono (the mean, as the live engine does) and hands
// the main thread blocks of BLOCK samples (~21 ms at 48 kHz), which go to the server unchanged.
const BLOCK = 1024;

class KkomaCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buf = new Float32Array(BLOCK);
    this.n = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let s = 0;
      for (let c = 0; c < channels.length; c++) s += channels[c][i];
      this.buf[this.n++] = s / channels.length;
      if (this.n === BLOCK) {
        this.port.postMessage(this.buf, [this.buf.buffer]);
        this.buf = new Float32Array(BLOCK);
        this.n = 0;
      }
    }
    return true;
  }
}

registerProcessor("kkoma-capture", KkomaCapture);
