# Debian bookworm (debootstrap --variant=minbase, then `docker import`) with CA certificates: the base of
# every stand-in. extra-ca/ holds the host's /usr/local/share/ca-certificates (often empty).
ARG ROOTFS_IMAGE
FROM ${ROOTFS_IMAGE}
ENV LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive
COPY sources.list /etc/apt/sources.list
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# pip vendors its own CA bundle and Node its own: both use the system's, which has the extra certificates
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["bash"]
