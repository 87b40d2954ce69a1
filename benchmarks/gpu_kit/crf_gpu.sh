#!/usr/bin/env bash
# One call on the lent GPU machine: the dense CRF on CUDA (issue 18): size sweep for the crossover, batched rows.
# Run from the repository root on the device machine, with .gpu/ laid out by benchmarks/gpu_kit/make_kit.py and
# carried (device tool: command "bash benchmarks/gpu_kit/crf_gpu.sh", carry [".gpu"]); results land in $OUT.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a $OUT/gpu.txt
B=benchmarks/crf_speed.py; A="--camvid .gpu/camvid --device cuda --iterations 5"
python3 $B $A --threads 2 --scales 0.125,0.25,0.5,1,2,4 --classes 21 --repeats 5 --no-backward 2>&1 | tee $OUT/sweep_t2.txt
python3 $B $A --threads 2 --scales 1 --classes 2,11,21,59,150 --batch 8 --repeats 5 2>&1 | tee $OUT/batch_t2.txt
python3 $B $A --threads 16 --scales 0.125,0.25,0.5,1,2,4 --classes 21 --repeats 5 --no-backward 2>&1 | tee $OUT/sweep_t16.txt
python3 $B $A --threads 2 --scales 1,2 --classes 21 --iterations 5,10 --repeats 5 --breakdown --no-backward 2>&1 | tee $OUT/breakdown.txt
