"""Width (channel) pruning: channel dependency groups (groups.py, per-op rules in rules.py)
and the pass that removes channels (passes/prune_channels.py). The Kind itself comes later."""
