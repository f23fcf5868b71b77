"""Result records, statistics, comparison and the gate (pure; no device, no click)."""
