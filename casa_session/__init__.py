"""casa_session: code that runs inside a user's session, never in the hub (the credential-sync sidecar, CasaCluster).

Kept free of imports here: ``python -m casa_session.credsync`` runs in a sidecar with the standard library only.
"""

#: example notebooks shipped with the package (the one-machine facility copies them into each home)
EXAMPLES_DIR = __file__.rsplit("/", 1)[0] + "/notebooks"
