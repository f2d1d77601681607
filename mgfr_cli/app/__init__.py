"""What the user runs: batch restore, the review page, the web UI, terminal output, shared CLI options."""
