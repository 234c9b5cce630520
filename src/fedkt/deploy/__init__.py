"""fedkt.deploy: FedCoLLM, FedCoT and FDKT across machines on Flower's deployment engine.

A SuperLink (started by `fedkt server`) relays messages between the ServerApp and one
SuperNode per client (`fedkt client`), each on its own machine with its own rows; the fedkt
config's ``algorithm`` picks the protocol. The apps themselves are the simulation's
(`fedkt.federation`); this package only adds what a deployment needs: apps that read their
settings and rows from Flower's run and node config (`apps`, with FedCoT's and FDKT's specs
in `fedcot` and `fdkt`, and what they share in `common`; `clientapp`, the torch-free module
Flower loads per message, forwards to the client's `worker`), the Flower processes and their
TLS and node-authentication flags (`launch`) and the client's rows on disk (`rows`).
Certificates for trials: `fedkt.certs`.
"""
