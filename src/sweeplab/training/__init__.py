"""One run: LightningModule, Trainer, loggers, resume, interrupts, ranks, multi-device."""
