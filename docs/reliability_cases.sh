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

# --- Round 2: checkpoints that choose code or paths, evaluations without weights, resumes that change the run
mkdir -p elsewhere && echo "open('IMPORTED', 'w').close()" >elsewhere/evil_data.py
$PY - <<'EOF'
import torch
def load():
    return torch.load("lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
c = load()
c["datamodule_hyper_parameters"].update(_class_path="evil_data.Data", data_dir="chosen/by/checkpoint", download=True)
torch.save(c, "imports.ckpt")
c = load()
c["datamodule_hyper_parameters"].update(data_dir="chosen/by/checkpoint", download=True)
torch.save(c, "elsewhere.ckpt")
torch.save({"state_dict": load()["state_dict"]}, "bare.ckpt")
c = load()
c["hyper_parameters"] = {"arch": "resnet8", "hidden_dim": 64}
torch.save(c, "foreign.ckpt")
c = load()
del c["state_dict"]["net.fc.weight"]
torch.save(c, "partial.ckpt")
EOF
PYTHONPATH="$PYTHONPATH:elsewhere" row "checkpoint naming a module to import as its data class" $PY -m resnet_lit test --ckpt_path imports.ckpt
[ -e IMPORTED ] && echo "!! the module was imported" || echo "(IMPORTED was not created: nothing was imported)"
row "checkpoint naming a data folder that does not exist here" $PY -m resnet_lit test --ckpt_path elsewhere.ckpt
[ -e chosen ] && echo "!! the checkpoint's folder was created" || echo "(chosen/ was not created: no folder, no download)"
row "the same, with --data.data_dir given" $PY -m resnet_lit test --ckpt_path elsewhere.ckpt "${QUIET[@]}" --data.data_dir data
row "a bare state_dict as a checkpoint" $PY -m resnet_lit test --ckpt_path bare.ckpt
row "a checkpoint of another LightningModule" $PY -m resnet_lit test --ckpt_path foreign.ckpt
row "a checkpoint missing a tensor" $PY -m resnet_lit fit "${BASE[@]}" --ckpt_path partial.ckpt
rm -rf elsewhere imports.ckpt elsewhere.ckpt bare.ckpt foreign.ckpt partial.ckpt
row "test with no --ckpt_path" $PY -m resnet_lit test "${QUIET[@]}" "${DATA[@]}"
row "test --ckpt_path last" $PY -m resnet_lit test --ckpt_path last "${QUIET[@]}"
row "predict --ckpt_path best" $PY -m resnet_lit predict --ckpt_path best "${QUIET[@]}" --predictions.path preds.csv
rm -f preds.csv
mkdir -p empty && cd empty && row "validate --ckpt_path last where no run is" $PY -m resnet_lit validate --ckpt_path last "${QUIET[@]}"
cd "$DIR" && rm -rf empty
cp lightning_logs/version_0/config.yaml config.before
row "fit --ckpt_path last with another lr" $PY -m resnet_lit fit "${BASE[@]}" --trainer.max_epochs 2 --ckpt_path last --model.lr 0.01
row "fit --ckpt_path last with another arch" $PY -m resnet_lit fit "${BASE[@]}" --trainer.max_epochs 2 --ckpt_path last --model.arch resnet14
cmp -s config.before lightning_logs/version_0/config.yaml && echo "(config.yaml unchanged)" || echo "!! config.yaml changed"
rm config.before
row "batch size above the training set" $PY -m resnet_lit fit "${BASE[@]}" --data.batch_size 501
row "val_size leaving less than a batch" $PY -m resnet_lit fit "${BASE[@]}" --data.val_size 560
mkdir -p images
$PY -c "from PIL import Image; Image.new('LA', (28, 28), (128, 0)).save('images/transparent.png')"
row "predict: a transparent image" $PY -m resnet_lit predict --ckpt_path $CKPT --data.predict_dir images
rm images/* && $PY -c "from PIL import Image; Image.new('I;16', (28, 28), 1000).save('images/deep.png')"
row "predict: a 16-bit image" $PY -m resnet_lit predict --ckpt_path $CKPT --data.predict_dir images
rm images/* && $PY -c "
from PIL import Image
p = Image.new('P', (28, 28), 1); p.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762); p.save('images/red.gif')"
row "predict: a GIF with a colour palette" $PY -m resnet_lit predict --ckpt_path $CKPT --data.predict_dir images
rm images/* && $PY -c "
from PIL import Image
f = [Image.new('L', (28, 28), v) for v in (0, 255)]; f[0].save('images/anim.gif', save_all=True, append_images=f[1:])"
row "predict: an animated GIF" $PY -m resnet_lit predict --ckpt_path $CKPT --data.predict_dir images
rm images/* && mkdir images/folder.png && touch images/empty.png
row "predict: a folder named .png and an empty .png" $PY -m resnet_lit predict --ckpt_path $CKPT --data.predict_dir images
rm -rf images

# --- Our own probe: the limits of numeric options
row "lr nan" $PY -m resnet_lit fit "${BASE[@]}" --model.lr nan
row "lr inf" $PY -m resnet_lit fit "${BASE[@]}" --model.lr inf
row "momentum 1" $PY -m resnet_lit fit "${BASE[@]}" --model.momentum 1
row "weight decay -1" $PY -m resnet_lit fit "${BASE[@]}" --model.weight_decay -1
row "gamma 0" $PY -m resnet_lit fit "${BASE[@]}" --model.gamma 0
row "milestone 0" $PY -m resnet_lit fit "${BASE[@]}" --model.milestones '[0, 10]'
row "warmup_steps -1" $PY -m resnet_lit fit "${BASE[@]}" --model.warmup_steps -1
row "num_workers -1" $PY -m resnet_lit fit "${BASE[@]}" --data.num_workers -1
row "crop_padding -1" $PY -m resnet_lit fit "${BASE[@]}" --data.crop_padding -1
row "resize 0" $PY -m resnet_lit fit "${BASE[@]}" --data.resize 0
row "std 0" $PY -m resnet_lit fit "${BASE[@]}" --data.std '[0]'
row "mean of 2 channels for 1" $PY -m resnet_lit fit "${BASE[@]}" --data.mean '[0.5, 0.5]'
row "val_size 1e9 (not an int)" $PY -m resnet_lit fit "${BASE[@]}" --data.val_size 1e9
row "max_steps -2" $PY -m resnet_lit fit "${BASE[@]}" --trainer.max_steps -2
row "misclassified -1" $PY -m resnet_lit test --ckpt_path $CKPT --insight.misclassified -1
row "precision 16-mixed on a CPU" $PY -m resnet_lit fit "${BASE[@]}" --trainer.precision 16-mixed --trainer.accelerator cpu
# Round 3: numbers Lightning divides by or checks only later, weights from elsewhere, exports, checkpoints' versions
row "seed_everything -1" $PY -m resnet_lit fit "${BASE[@]}" --seed_everything -1
row "num_nodes 0" $PY -m resnet_lit fit "${BASE[@]}" --trainer.num_nodes 0
row "accumulate_grad_batches 0" $PY -m resnet_lit fit "${BASE[@]}" --trainer.accumulate_grad_batches 0
row "check_val_every_n_epoch 0" $PY -m resnet_lit fit "${BASE[@]}" --trainer.check_val_every_n_epoch 0
row "val_check_interval 0" $PY -m resnet_lit fit "${BASE[@]}" --trainer.val_check_interval 0
row "val_check_interval 1e9 (more than an epoch)" $PY -m resnet_lit fit "${BASE[@]}" --trainer.val_check_interval 1000000000
row "num_workers 1e9" $PY -m resnet_lit fit "${BASE[@]}" --data.num_workers 1000000000
row "resize 1e9" $PY -m resnet_lit fit "${BASE[@]}" --data.resize 1000000000
row "crop_padding 1e9" $PY -m resnet_lit fit "${BASE[@]}" --data.crop_padding 1000000000
row "CUDA graphs with gradient accumulation" $PY -m resnet_lit fit "${BASE[@]}" --model.compile true --model.compile_mode reduce-overhead --trainer.accumulate_grad_batches 2
echo hello >weights.txt
row "init_weights: a text file" $PY -m resnet_lit fit "${BASE[@]}" --model.init_weights weights.txt
row "init_weights: a torchvision name that does not exist" $PY -m resnet_lit fit "${BASE[@]}" --model.arch resnet18 --model.init_weights ResNet18_Weights.BOGUS
row "init_weights: resnet8's checkpoint into plain8" $PY -m resnet_lit fit "${BASE[@]}" --model.arch plain8 --model.init_weights $CKPT
rm weights.txt
row "export --out naming the checkpoint" $PY -m resnet_lit.export --ckpt_path $CKPT --format state_dict --out $CKPT
row "export --out in a missing folder" $PY -m resnet_lit.export --ckpt_path $CKPT --format state_dict --out nowhere/net.pt
$PY -c "
import torch
c = torch.load('$CKPT', weights_only=True); c['pytorch-lightning_version'] = '1.0.0'; torch.save(c, 'old.ckpt')"
row "a checkpoint of Lightning 1.0.0" $PY -m resnet_lit test --ckpt_path old.ckpt
rm old.ckpt
# Odd files in every place a path is read
row "data_dir is a file" $PY -m resnet_lit fit "${BASE[@]}" --data.data_dir "$CKPT"
row "--ckpt_path is a folder" $PY -m resnet_lit test --ckpt_path lightning_logs/version_0
: >empty.ckpt
row "--ckpt_path is an empty file" $PY -m resnet_lit test --ckpt_path empty.ckpt
rm empty.ckpt
row "--config is a folder" $PY -m resnet_lit fit --config lightning_logs
printf 'model:\n  arch: resnet8\n  lr: [0.1\n' >broken.yaml
row "--config with a YAML syntax error" $PY -m resnet_lit fit --config broken.yaml
printf 'model:\n  arch: resnet8\n  depth: 20\n' >unknown.yaml
row "--config with an unknown key" $PY -m resnet_lit fit --config unknown.yaml
rm broken.yaml unknown.yaml
row "--config that does not exist" $PY -m resnet_lit fit --config nothere.yaml
# The disk fills up while checkpoints are written (a file-size limit stands in for a full disk)
row "the disk fills during the first checkpoint" prlimit --fsize=200000 $PY -m resnet_lit fit "${BASE[@]}" --trainer.default_root_dir full
rm -rf full
# Signals during evaluation: the process stops, and nothing half-written is left
sigrow() {  # sigrow DESCRIPTION SIGNAL ARGS...: run, send SIGNAL to itself at the first batch, report
  local what=$1 sig=$2; shift 2
  "$@" --trainer.callbacks+=processes.SignalAtBatch --trainer.callbacks.signal_name="$sig" >"$DIR.out" 2>"$DIR.err"
  local status=$?
  local said; said=$(grep -v '^\s*$' "$DIR.err" | tail -n 1)
  echo "| $what | $status | \`${said//|/\\|}\` | $(ls sig.csv .sig.csv.partial 2>/dev/null | wc -l) predictions files left |"
}
sigrow "SIGTERM during test" SIGTERM $PY -m resnet_lit test --ckpt_path $CKPT "${QUIET[@]}"
sigrow "SIGTERM during predict" SIGTERM $PY -m resnet_lit predict --ckpt_path $CKPT "${QUIET[@]}" --predictions.path sig.csv
sigrow "Ctrl-C during predict" SIGINT $PY -m resnet_lit predict --ckpt_path $CKPT "${QUIET[@]}" --predictions.path sig.csv
rm -rf sig.csv lightning_logs/version_[1-9]*
# SIGTERM in fit before any step can be saved: in the sanity check (where torch.compile first
# compiles), and one that also fails its step (the same signal to the process group ends the compiler)
row "SIGTERM in fit's sanity check" $PY -m resnet_lit fit "${BASE[@]}" --trainer.callbacks+=processes.SignalAtBatch
row "SIGTERM that fails the 4th step" $PY -m resnet_lit fit "${BASE[@]}" --trainer.callbacks+=processes.SignalThenFail \
  --trainer.callbacks.step 3
# Malformed TensorBoard folders for report
mkdir -p tb/empty/lightning_logs/version_0 tb/noevents/lightning_logs/version_0 tb/truncated tb/junk
: >tb/empty/lightning_logs/version_0/events.out.tfevents.0.host.1.0
echo "model: {arch: resnet8}" >tb/noevents/lightning_logs/version_0/hparams.yaml
cp -r lightning_logs/version_0 tb/truncated/version_0
for f in tb/truncated/version_0/events.out.tfevents.*; do head -c 300 "$f" >"$f.cut" && mv "$f.cut" "$f"; done
cp -r lightning_logs/version_0 tb/junk/version_0 && echo "model: [unclosed" >tb/junk/version_0/hparams.yaml
row "report: an empty event file" $PY -m resnet_lit.report tb/empty
row "report: a run folder without event files" $PY -m resnet_lit.report tb/noevents
row "report: truncated event files" $PY -m resnet_lit.report tb/truncated/version_0
row "report: a malformed hparams.yaml" $PY -m resnet_lit.report tb/junk/version_0
row "report: a file, not a folder" $PY -m resnet_lit.report "$CKPT"
rm -rf tb

# Interruptions: a run of 3 epochs of 10 steps, signalled once its first epoch's last.ckpt exists,
# then resumed with --ckpt_path last and compared with the same run left alone. Twice: stopped by
# max_epochs, and under the shipped configs/r20.yaml, which stops by max_steps (its step schedule
# scaled to 30 steps).
LONG=(fit --model.arch resnet8 --trainer.max_epochs 3 --trainer.deterministic true --seed_everything 7
  --model.schedule cosine "${QUIET[@]}" "${DATA[@]}")
STEPS=(fit --config "$REPO/configs/r20.yaml" --model.arch resnet8 --trainer.max_steps 30
  --model.milestones "[15,23]" --trainer.deterministic true --seed_everything 7 "${QUIET[@]}" "${DATA[@]}")
interrupt() {  # interrupt NAME SIGNAL WHOLE LABEL ARGS...: a row, and the resumed run's line below
  local name=$1 sig=$2 whole=$3 label=$4; shift 4  # WHOLE: the folder of the run left alone
  [ -d $whole ] || $PY -m resnet_lit "$@" --trainer.default_root_dir $whole >/dev/null 2>&1
  mkdir -p $name
  $PY -m resnet_lit "$@" --trainer.default_root_dir $name >$name/out1 2>$name/err1 &
  local pid=$!
  until [ -e $name/lightning_logs/version_0/checkpoints/last.ckpt ] || ! kill -0 $pid 2>/dev/null; do sleep 0.01; done
  kill -s $sig $pid
  wait $pid
  local status=$?
  local step; step=$($PY -c "import torch; print(torch.load('$name/lightning_logs/version_0/checkpoints/last.ckpt', weights_only=True)['global_step'])")
  local said; said=$(grep -v '^\s*$' $name/err1 | tail -n 1)
  [ $sig = KILL ] && said="(nothing: no handler runs on SIGKILL)"
  echo "| SIG$sig after the first epoch's checkpoint$label | $status | \`$said\` | last.ckpt at step $step |"
  $PY -m resnet_lit "$@" --trainer.default_root_dir $name --ckpt_path last >$name/out2 2>$name/err2
  $PY -c "
import torch
a = torch.load('$whole/lightning_logs/version_0/checkpoints/last.ckpt', weights_only=True)
b = torch.load('$name/lightning_logs/version_0/checkpoints/last.ckpt', weights_only=True)
said = [l for l in (open('$name/out2').read() + open('$name/err2').read()).splitlines() if 'Restoring states' in l]
print('  resumed:', said, '| ended at step', b['global_step'], '(left alone:', a['global_step'], end=')')
a, b = a['state_dict'], b['state_dict']
print(' | max abs weight difference to the run left alone:', max((a[k].double() - b[k].double()).abs().max().item() for k in a))"
}
for sig in KILL TERM INT; do interrupt $sig $sig whole "" "${LONG[@]}"; done
interrupt r20-KILL KILL whole-r20 ", configs/r20.yaml (max_steps)" "${STEPS[@]}"
