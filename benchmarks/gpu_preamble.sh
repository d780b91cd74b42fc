# Sourced by the one-GPU benchmark scripts (gpu_mfu.sh, gpu_check.sh) with their arguments: from the
# repository root, name the GPU (skipped for --dry-run on CPU) and the torch build before a run.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ " $* " != *" --dry-run "* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
