# Sourced by scripts/k8s-bins.sh and scripts/vpc-cni-image.sh: a container
# image as a docker archive that `ctr images import` takes, made without
# docker or a registry.

# image NAME[,NAME...] ROOTFS CONFIG_JSON OUT: one uncompressed layer (ROOTFS, owned by
# root, reproducible), a config, a manifest; OUT is replaced atomically.
image() {
    local name="$1" rootfs="$2" config="$3" out="$4" work diff
    work="$(mktemp -d)"
    tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C "$rootfs" -cf "$work/layer.tar" .
    diff="sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
    printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
        "$config" "$diff" >"$work/config.json"
    # NAME may be several tags, comma-separated: one archive, every tag.
    printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "${name//,/\",\"}" >"$work/manifest.json"
    tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out.tmp.$$" manifest.json config.json layer.tar
    mv "$out.tmp.$$" "$out"
    rm -rf "$work"
}
