#!/usr/bin/env bash
# Tries every fault and bad input of docs/reliability.md against a scratch folder holding a real
# run, and prints one table row each: the command, its exit status, the last line it wrote to
# stderr, and whether every file already under the folder was kept (same size and mtime), with
# a count of the files it added. Stand-in data (600 training and 200 test images in the real IDX
# format), so it runs anywhere in a few minutes:
#
#   bash docs/reliability_cases.sh /tmp/reliability      # from the repository root
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
DIR=${1:-/tmp/reliability}
export PYTHONPATH="$REPO:$REPO/tests${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$DIR" && mkdir -p "$DIR" && cd "$DIR" || exit 1
$PY -c "from conftest import write_fashion_mnist; from pathlib import Path; write_fashion_mnist(Path('data'))"
DATA=(--data.data_dir data --data.download false --data.val_size 100 --data.batch_size 50)
QUIET=(--trainer.enable_progress_bar false)
BASE=(--model.arch resnet8 --trainer.max_epochs 1 "${QUIET[@]}" "${DATA[@]}")
$PY -m resnet_lit fit "${BASE[@]}" >/dev/null 2>&1  # the work on disk: lightning_logs/version_0
CKPT=lightning_logs/version_0/checkpoints/last.ckpt

# Files with their size and mtime; folders by name only (adding a file changes a folder's mtime).
state() { { find . -type f -printf '%p %s %T@\n'; find . -type d -printf '%p/\n'; } | sort; }
row() {  # row DESCRIPTION ARGS...: run, then print | description | exit | last stderr line | files |
  local what=$1; shift
  local before; before=$(state)
  "$@" >"$DIR.out" 2>"$DIR.err"; local status=$?
  local said; said=$(grep -v '^\s*$' "$DIR.err" | tail -n 1)
  # Every file that was there before is still there, unchanged ("kept"); files the command
  # added are counted separately (a run that started writes its own new log folder).
  local after; after=$(state)
  local lost; lost=$(comm -23 <(echo "$before") <(echo "$after") | wc -l)
  local added; added=$(comm -13 <(echo "$before") <(echo "$after") | wc -l)
  local files="kept, nothing new"
  [ "$added" -gt 0 ] && files="kept; $added new files or folders"
  [ "$lost" -gt 0 ] && files="CHANGED: $lost files or folders changed or gone"
  echo "| $what | $status | \`${said//|/\\|}\` | $files |"
}

echo "| fault or bad input | exit | what the program said (last stderr line) | files already on disk |"
echo "|---|---|---|---|"
row "unknown arch" $PY -m resnet_lit fit "${BASE[@]}" --model.arch resnet9
row "lr 0" $PY -m resnet_lit fit "${BASE[@]}" --model.lr 0
row "lr not a number" $PY -m resnet_lit fit "${BASE[@]}" --model.lr abc
row "batch size 0" $PY -m resnet_lit fit "${BASE[@]}" --data.batch_size 0
row "max_epochs 0" $PY -m resnet_lit fit "${BASE[@]}" --trainer.max_epochs 0
row "val_size 0" $PY -m resnet_lit fit "${BASE[@]}" --data.val_size 0
row "val_size = the training set" $PY -m resnet_lit fit "${BASE[@]}" --data.val_size 600
row "unknown option" $PY -m resnet_lit fit "${BASE[@]}" --model.depth 20
row "missing data folder, download false" $PY -m resnet_lit fit "${BASE[@]}" --data.data_dir nowhere

mkdir -p bad && cp -r data/FashionMNIST bad/
RAW=bad/FashionMNIST/raw
head -c 100000 data/FashionMNIST/raw/train-images-idx3-ubyte >$RAW/train-images-idx3-ubyte
row "truncated IDX images file" $PY -m resnet_lit fit "${BASE[@]}" --data.data_dir bad
cp data/FashionMNIST/raw/* $RAW/ && printf '<html>not found</html>' >$RAW/t10k-images-idx3-ubyte
row "IDX file that is an HTML page" $PY -m resnet_lit fit "${BASE[@]}" --data.data_dir bad
cp data/FashionMNIST/raw/* $RAW/ && cp data/FashionMNIST/raw/t10k-labels-idx1-ubyte $RAW/train-labels-idx1-ubyte
row "image and label counts disagree" $PY -m resnet_lit fit "${BASE[@]}" --data.data_dir bad
rm -rf bad

row "checkpoint of another arch + --config" $PY -m resnet_lit test --ckpt_path $CKPT --config "$REPO/configs/r20.yaml" "${DATA[@]}"
mkdir -p images && $PY -c "from PIL import Image; Image.new('L', (32, 32)).save('images/a.png')"
row "predict on 32x32 images" $PY -m resnet_lit predict --ckpt_path $CKPT --data.predict_dir images
$PY -c "from PIL import Image; Image.new('RGB', (28, 28)).save('images/a.png')"
row "predict on RGB images" $PY -m resnet_lit predict --ckpt_path $CKPT --data.predict_dir images
rm -rf images
row "missing checkpoint file" $PY -m resnet_lit test --ckpt_path nothere.ckpt

$PY - <<'EOF'
import os, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch PAYLOAD_RAN",))
checkpoint = torch.load("lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
checkpoint["hyper_parameters"]["note"] = Payload()
torch.save(checkpoint, "crafted.ckpt")
EOF
row "checkpoint that runs a command when unpickled" $PY -m resnet_lit test --ckpt_path crafted.ckpt
[ -e PAYLOAD_RAN ] && echo "!! the payload ran" || echo "(PAYLOAD_RAN was not created)"
row "--weights_only false" $PY -m resnet_lit test --ckpt_path $CKPT --weights_only false
rm -f crafted.ckpt

cp $CKPT saved.ckpt && head -c 100000 saved.ckpt >$CKPT
row "truncated last.ckpt, fit --ckpt_path last" $PY -m resnet_lit fit "${BASE[@]}" --trainer.max_epochs 2 --ckpt_path last
$PY -c "
d = bytearray(open('saved.ckpt', 'rb').read()); m = len(d) // 2; d[m:m + 64] = bytes(255 - b for b in d[m:m + 64])
open('$CKPT', 'wb').write(bytes(d))"
row "bit-flipped last.ckpt, fit --ckpt_path last" $PY -m resnet_lit fit "${BASE[@]}" --trainer.max_epochs 2 --ckpt_path last
mv saved.ckpt $CKPT

row "lr 1e6 from the first step" $PY -m resnet_lit fit "${BASE[@]}" --model.lr 1e6 --trainer.default_root_dir diverge
STEP=(--model.schedule step --model.interval epoch --model.step_size 1 --model.gamma 1e7)
row "lr 0.1, then 1e6 from the second epoch" $PY -m resnet_lit fit "${BASE[@]}" --trainer.max_epochs 3 "${STEP[@]}" --trainer.default_root_dir diverge
$PY -c "
import glob, torch
for p in sorted(glob.glob('diverge/lightning_logs/*/checkpoints/*.ckpt')):
    c = torch.load(p, weights_only=True)
    print(p, 'global_step', c['global_step'], 'finite', all(t.isfinite().all().item() for t in c['state_dict'].values() if t.is_floating_point()))"
rm -rf diverge

# Interruptions: a run of 3 epochs of 10 steps, signalled once its first epoch's last.ckpt exists,
# then resumed with --ckpt_path last and compared with the same run left alone.
LONG=(fit --model.arch resnet8 --trainer.max_epochs 3 --trainer.deterministic true --seed_everything 7
  --model.schedule cosine "${QUIET[@]}" "${DATA[@]}")
$PY -m resnet_lit "${LONG[@]}" --trainer.default_root_dir whole >/dev/null 2>&1
for sig in KILL TERM INT; do
  mkdir -p $sig
  $PY -m resnet_lit "${LONG[@]}" --trainer.default_root_dir $sig >$sig/out1 2>$sig/err1 &
  pid=$!
  until [ -e $sig/lightning_logs/version_0/checkpoints/last.ckpt ] || ! kill -0 $pid 2>/dev/null; do sleep 0.01; done
  kill -s $sig $pid
  wait $pid
  status=$?
  step=$($PY -c "import torch; print(torch.load('$sig/lightning_logs/version_0/checkpoints/last.ckpt', weights_only=True)['global_step'])")
  said=$(grep -v '^\s*$' $sig/err1 | tail -n 1)
  [ $sig = KILL ] && said="(nothing: no handler runs on SIGKILL)"
  echo "| SIG$sig after the first epoch's checkpoint | $status | \`$said\` | last.ckpt at step $step |"
  $PY -m resnet_lit "${LONG[@]}" --trainer.default_root_dir $sig --ckpt_path last >$sig/out2 2>$sig/err2
  $PY -c "
import torch
a = torch.load('whole/lightning_logs/version_0/checkpoints/last.ckpt', weights_only=True)
b = torch.load('$sig/lightning_logs/version_0/checkpoints/last.ckpt', weights_only=True)
said = [l for l in (open('$sig/out2').read() + open('$sig/err2').read()).splitlines() if 'Restoring states' in l]
print('  resumed:', said, '| ended at step', b['global_step'], '(left alone:', a['global_step'], end=')')
a, b = a['state_dict'], b['state_dict']
print(' | max abs weight difference to the run left alone:', max((a[k].double() - b[k].double()).abs().max().item() for k in a))"
done
