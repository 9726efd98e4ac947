"""Consent contracts and governance for Sentinel Federation (no Flower, no torch).

- :mod:`governance.contracts` — the consent contract of each component, and the versioned set of them.
- :mod:`governance.policy_file` — policy files (YAML/JSON) and ``derive_contracts``; ``default_policy.yaml``.
- :mod:`governance.policy` — ``PolicyEngine.may`` / ``permitted_set``.
- :mod:`governance.enforcement` — the coordinator's consent check of an update.
- :mod:`governance.agency` — components signalling their own state from measurements.
- :mod:`governance.registry`, :mod:`governance.proposals`, :mod:`governance.parameters` — nodes, proposals, votes.
- :mod:`governance.governor` — performs every governance act (store + ledger) and answers queries.
- :mod:`governance.store` — SQLModel persistence; :mod:`governance.service` / :mod:`governance.client` — gRPC.
"""
