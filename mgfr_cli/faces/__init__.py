"""Photos in and out, and faces in them: reading/writing, inputs, detection, alignment, paste-back, conditions, identity."""
