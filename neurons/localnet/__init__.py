"""The local subnet: a whole network on one machine, for the demo and the integration tests.

No live node imports this package. ``launcher`` is ``tessera localnet`` (devchain, S3 server,
one OS process per node), ``view`` its live table and JSON summary, ``seaweedfs`` the loopback
S3 server it and the tests start. Import from the modules; this file stays empty so that
importing one of them pulls in nothing else.
"""
