"""The agents' link to the registry, one for both roles: the typed client (client.py), the
join (join.py), the watch loop with re-watch and rate limit (watch.py), status reports
(reporter.py), outage logs and back-off (outage.py), all wired by session.py; and the last
desired state kept on disk (statefile.py)."""
