"""casa_condor: HTCondor as one user sees it -- runs wherever HTCondor's tools are (the hub, a dask-gateway, a session).

``schedd.UserSchedd`` reaches the schedd with exactly one IDTOKEN; ``output`` parses what the tools print.
Kept free of imports here, and of the hub's spawners everywhere, so a session can use it.
"""
