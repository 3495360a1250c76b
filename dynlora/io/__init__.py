"""Files: PEFT export and load, adapter-folder checks, checkpoints."""
