//! Opening `--card FILE` / `--reader NAME` targets (in progress).
