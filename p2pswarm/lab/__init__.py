"""The lab: a whole cluster on one machine, its demo service, and chaos runs against it.

* :mod:`p2pswarm.lab.cluster` starts, stops, kills and restarts lab nodes (loopback
  addresses, or one network namespace per node with ``--netns``) and deploys the demo.
* :mod:`p2pswarm.lab.netns` creates the namespaces, the bridge and the nftables faults.
* :mod:`p2pswarm.lab.demo_app` is the demo web service (``python -m p2pswarm.lab.demo_app``).
* :mod:`p2pswarm.lab.scenario` parses chaos scenarios (TOML), :mod:`p2pswarm.lab.load`
  is the bounded HTTP load generator, :mod:`p2pswarm.lab.chaos` runs a scenario (its actions
  and faults in :mod:`p2pswarm.lab.faults`, its acknowledged writes in :mod:`p2pswarm.lab.writes`)
  and :mod:`p2pswarm.lab.report` turns what it observed into the JSON report and the PNG.
"""
