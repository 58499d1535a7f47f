"""Building a boot environment from a kernel in the state root: the
standard flavor (Debian's generic kernel with the standard driver set) or
any kernel and driver set (UYOK: the golden client's own kernel and the
modules it had loaded)."""

from __future__ import annotations

from pathlib import Path

from bootenv import drivers, squash, tools
from bootenv.build import BuildResult, BuildSpec, build
from bootenv.freeze import freeze_agent
from kernels.moduledb import idle_modules, loaded_modules
from kernels.standard import DEFAULT_FLAVOR
from kernels.tree import KernelTree, find, newest_of_flavor
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from sysclone.ui import Ui


def find_kernel(state: StateRoot, flavor: str, fetch: bool = True, ui: Ui | None = None
                ) -> KernelTree:
    """The newest kernel of `flavor` (Debian version order), fetched when
    there is none."""
    have = newest_of_flavor(state.kernels, flavor)
    if have is not None:
        return have
    if not fetch:
        raise ConfigError(f"no kernel of flavor {flavor} yet",
                          hint=f"sysclone kernel add --flavor {flavor}")
    from kernels.standard import fetch_standard

    if ui:
        with ui.progress(f"linux-image-{flavor}", None) as update:
            return fetch_standard(state, flavor=flavor, progress=update)
    return fetch_standard(state, flavor=flavor)


def recorded_modules(state: StateRoot, tree: KernelTree) -> str:
    """The /proc/modules recorded with the image version a kernel came from."""
    from imageserver.names import ImageRef
    from imageserver.store import ImageStore

    if tree.origin != "image" or not tree.image:
        raise ConfigError(f"--modules loaded: kernel {tree.name} is not from a captured image, "
                          "so no client's modules are recorded with it",
                          hint="give the listing with --modules-from FILE (/proc/modules or "
                               "lsmod of the golden client)")
    ref = ImageRef.parse(tree.image)
    store = ImageStore(state)
    vdir = store.versions.version_dir(ref.name, ref.version) if ref.version else None
    f = vdir / "modules" if vdir else None
    if f is None or not f.is_file():
        raise ConfigError(f"--modules loaded: image {tree.image} has no recorded modules "
                          "(only captures of a running client record them)",
                          hint="give the listing with --modules-from FILE")
    return f.read_text()


def compact(request: drivers.DriverRequest, tree: KernelTree, compression: str | None
            ) -> tuple[str, squash.Packing]:
    """Compression of stage 1 and how the squashfs is packed.  UYOK
    `loaded` is the flavor built to be small (its own target: 0.8 of the
    image's own initrd), where the agent and its tools are nearly all the
    bytes: squash.COMPACT_PACKING and, when the kernel's configuration says
    it decompresses xz with the x86 filter (CONFIG_RD_XZ, CONFIG_XZ_DEC_X86),
    xz for stage 1 (1.40 -> 1.27 MB measured, for a fraction of a second
    more of decompression under emulation).  The standard flavor keeps zstd
    for stage 1 and squash.STANDARD_PACKING -- unless the kernel's
    configuration is unknown or its squashfs lacks zstd
    (CONFIG_SQUASHFS_ZSTD): xz then, as every squashfs with xz reads it.
    Driver lists and `all` get squash.NARROW_PACKING (small machines).
    --compression always wins for stage 1."""
    config = tree.config
    lines = set(config.read_text().splitlines()) if config is not None else set()
    if request.how == "standard":
        packing = squash.STANDARD_PACKING if "CONFIG_SQUASHFS_ZSTD=y" in lines \
            else squash.COMPACT_PACKING
        return compression or "zstd", packing
    if request.how != "loaded":
        return compression or "zstd", squash.NARROW_PACKING
    if compression is None:
        compression = "xz" if {"CONFIG_RD_XZ=y", "CONFIG_XZ_DEC_X86=y"} <= lines else "zstd"
    return compression, squash.COMPACT_PACKING


def driver_request(state: StateRoot, tree: KernelTree, modules_arg: str | None,
                   add: tuple[str, ...], modules_from: Path | None) -> drivers.DriverRequest:
    loaded: list[str] = []
    text = ""
    if modules_from is not None:
        if modules_arg not in (None, "loaded"):
            raise ConfigError("--modules-from goes with --modules loaded")
        modules_arg = "loaded"
        try:
            text = modules_from.read_text()
        except OSError as e:
            raise ConfigError(f"--modules-from {modules_from}: {e.strerror}") from None
        try:
            loaded = loaded_modules(text)
        except ConfigError as e:
            raise ConfigError(f"--modules-from {modules_from}: {e.message}",
                              hint=e.hint) from None
    elif modules_arg == "loaded":
        text = recorded_modules(state, tree)
        loaded = loaded_modules(text)
    return drivers.DriverRequest.parse(modules_arg, add, loaded, idle_modules(text))


def build_bootenv(state: StateRoot, ui: Ui, *, output: Path | None = None,
                  kernel: str | None = None, flavor: str = DEFAULT_FLAVOR,
                  modules_arg: str | None = None, add_modules: tuple[str, ...] = (),
                  modules_from: Path | None = None,
                  tool_groups: tuple[str, ...] | None = None, compression: str | None = None,
                  local_cfg: Path | None = None, use_cache: bool = True,
                  packing: str = "auto", init_script: str | None = None) -> BuildResult:
    """`kernel`: a name in state.kernels or a tree directory (default: the
    newest of `flavor`, fetched when missing); `modules_arg`: standard
    (default), all, loaded, or groups/names/globs (bootenv.drivers)."""
    tree = find(state.kernels, kernel) if kernel else find_kernel(state, flavor, ui=ui)
    request = driver_request(state, tree, modules_arg, add_modules, modules_from)
    out = output or state.bootenvs / "standard"
    with ui.step("freeze the agent"):
        agent = freeze_agent(state, use_cache=use_cache)
    follow = tool_groups is None
    compression, squashfs = compact(request, tree, compression)
    tool_groups = tool_groups or tools.DEFAULT_TOOLS
    spec = BuildSpec(
        kernel_image=tree.vmlinuz, modules_dir=tree.modules_dir, kver=tree.kver,
        flavor="standard" if request.how == "standard" else f"uyok-{request.how}",
        drivers=request,
        firmware_dir=tree.firmware_dir if tree.firmware_dir.is_dir() else None,
        tool_groups=tool_groups, tools_follow_drivers=follow,
        compression=compression, squashfs=squashfs, hot_python=request.how != "loaded",
        local_cfg=local_cfg, packing=packing,
        init_script=init_script,
        kernel_info={"name": tree.name, "flavor": tree.flavor, "origin": tree.origin,
                     "source": tree.describe_source(), "path": str(tree.path),
                     **({"package": tree.package.name,
                         "package_version": tree.package.version,
                         "package_sha256": tree.package.sha256} if tree.package else {})},
    )
    with ui.step(f"build the boot environment for {tree.kver} in {out}") as update:
        return build(spec, agent, out, step=update)



