"""Live I/O: audio input, ring buffer, processing thread, MIDI output and the recorder."""
