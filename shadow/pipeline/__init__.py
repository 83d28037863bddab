"""The pipeline: read sources, dedupe, call the candidates, write, compare and route,
for a replay and for the daemon alike; progress of long replays; sources that fail on their
own. Imports everything below it (rollout, compare, candidates, store, config, connectors,
core)."""
