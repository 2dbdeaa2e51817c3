"""Over-the-air updates, the aggregator's side: the signed release repository
(:mod:`.repository`), what a release of each kind is (:mod:`.artifacts`), adding releases
(:mod:`.releases`), per-agent download tokens (:mod:`.tokens`), the agents' reports
(:mod:`.records`), rollouts (:mod:`.rollouts`) and the loop in ``secagg serve`` that publishes
desired states and keeps the repository's timestamp fresh (:mod:`.controller`).
See docs/ota.md."""
