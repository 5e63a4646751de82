"""casa_hub: the facility model -- names, routes, credentials and renewals as plain data."""
