# kube-proxy in iptables mode runs iptables-restore and conntrack; nft is there for its nftables mode (and for the
# clean-up of that mode's rules it does at start). Debian's iptables defaults to the nf_tables backend, as the
# node's own iptables does, so kube-proxy's rules and the CNI plugins' rules land in the same tables.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y iptables nftables conntrack \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY kube-proxy /usr/local/bin/kube-proxy
