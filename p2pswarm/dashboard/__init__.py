"""`p2pswarm dashboard`: a read-only web page of the cluster, served next to the local node.

The page's own server (:mod:`p2pswarm.dashboard.server`) reads the node through its unix API
socket (the same ``GET`` routes ``top``, ``mesh routes`` and ``events`` use) and the newest
``lab chaos`` report from disk; the browser polls it for JSON and draws everything with DOM
text nodes, so names and labels are never parsed as markup.
"""
