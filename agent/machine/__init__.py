"""The machine agent: installs, runs, checks and routes the instances placed on its host.

agent.py wires the parts and runs the loops; rollout.py installs, starts and replaces
instances; departures.py stops and forgets the ones that left; checks.py health-checks them;
spawner.py says how app code runs (uid, cgroups, environment); app_runs.py where one-off and
release-phase commands run; proxy.py keeps nginx in line; adoption.py takes over what a
previous run left running."""
