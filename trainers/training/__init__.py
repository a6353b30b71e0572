"""Training under Ray Train: TRL's SFT and DPO trainers inside DeepSpeed workers, and their stage configs."""
