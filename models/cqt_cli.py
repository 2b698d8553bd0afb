"""``kkoma cqt FILE``: compute the CQT features of an audio file and summarise them (a look at what the model sees)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", help="audio file (any rate, any channel count)")
    p.add_argument("--stream", action="store_true",
                   help="feed the file through the incremental (live) transform in 10 ms blocks instead of the batch one")
    p.add_argument("--save", metavar="NPY", help="save the (n_frames, n_bins) float32 features to a .npy file")
    p.add_argument("--every", type=float, default=1.0, metavar="S",
                   help="print the strongest notes every S seconds (default 1.0)")


def run(args: argparse.Namespace, settings) -> int:
    import time

    import numpy as np

    from kkoma.models.audio import load_audio
    from kkoma.models.cqt import CQT
    from kkoma.models.errors import KkomaError
    from kkoma.models.notes import note_name

    sr, hop = settings.audio.sample_rate, settings.audio.hop_length
    audio = load_audio(args.audio, settings)
    if len(audio) == 0:
        raise KkomaError(f"{args.audio} holds no audio samples: there is nothing to transform.")
    cqt = CQT(settings)
    t0 = time.perf_counter()
    if args.stream:
        inc = cqt.incremental()
        feats = np.concatenate([inc.process(audio[i:i + hop]) for i in range(0, len(audio), hop)] + [inc.flush()])
    else:
        feats = cqt.features(audio)
    elapsed = time.perf_counter() - t0
    seconds = len(audio) / sr
    if feats.shape[0] == 0:
        raise KkomaError(f"{args.audio} is too short for one frame ({seconds * 1000:.1f} ms of audio; "
                         f"a frame is {1000 * hop / sr:.0f} ms).")
    print(f"{args.audio}: {seconds:.2f} s -> {feats.shape[0]} frames x {feats.shape[1]} bins "
          f"({'incremental' if args.stream else 'batch'}, {elapsed * 1000:.0f} ms incl. compilation, "
          f"look-ahead {cqt.lookahead_ms:.1f} ms)")
    bps = settings.cqt.bins_per_semitone
    step = max(1, int(round(args.every * settings.audio.frame_rate)))
    floor = max(float(feats.max()) * 0.5, 1e-6)
    for i in range(0, feats.shape[0], step):
        frame = feats[i]
        keys = frame.reshape(-1, int(bps)).max(axis=1) if bps == int(bps) else frame
        top = [k for k in np.argsort(keys)[::-1][:3] if keys[k] >= floor]
        names = " ".join(note_name(settings.cqt.fmin_midi + int(k)) for k in top) or "-"
        print(f"  {i / settings.audio.frame_rate:7.2f} s  {names}")
    if args.save:
        np.save(args.save, feats)
        print(f"saved {args.save}")
    return 0
