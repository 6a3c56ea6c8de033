"""The live view: the flock in a browser at ``GET /`` of the gateway, and in a terminal
(``flockrt top``).

:class:`~flockrt.view.live.LiveView` is what a running flock holds: its
:class:`~flockrt.view.node.NodeView` (this node sampled, other nodes heard over NATS) and the
:class:`~flockrt.view.feed.Feed` the page and ``flockrt top`` read. :mod:`flockrt.view.http`
serves both; :mod:`flockrt.view.top` draws them in a terminal. This package imports nothing
heavy itself, so that ``flockrt --help`` stays fast.
"""
