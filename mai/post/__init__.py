"""Post-training on the shared trainer: SFT on chat data (optionally LoRA) and DPO on preference pairs."""
