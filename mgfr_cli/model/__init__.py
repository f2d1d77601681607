"""The restorer: base model, adapter, what an adapter is for (profiles), prompts, sampling, cleaner, upsampler, pipeline."""
