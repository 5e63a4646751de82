"""casa_auth: who is this person, may they in, are they admin."""
