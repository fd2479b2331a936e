"""What every stage shares: settings (every default), errors, atomic writes, device and precision,
provenance records, locks, a full disk, progress bars, metrics and caveats. Knows no stage."""
