# Warm start (src/tokenforge/warm.py): for a local run, onstart starts one server that imports torch, timm, DeepSpeed,
# scikit-learn and tokenforge once, and every job's `python -m tokenforge ...` has it fork the job instead of
# importing them again (3-5 s per job on a laptop CPU). Jobs find it through $TOKENFORGE_WARM, which they inherit
# from this process; without a server (config warm_start: false, a cluster executor, a GPU, a dry run) they run cold.
# The server leaves with this process (it watches its pid) or when onsuccess/onerror stop it.
import subprocess

WARM_SOCKET = None


def warm_start():
    global WARM_SOCKET
    if not config.get("warm_start", True) or not workflow.local_exec or workflow.dryrun or workflow.touch:
        return
    from tokenforge.warm import ENV, TEXT_PRELOAD, socket_path

    try:
        path = socket_path(E)
    except OSError as exc:
        print(f"warm start off: {exc}", file=sys.stderr)
        return
    os.makedirs(f"{E}/logs", exist_ok=True)
    with open(f"{E}/logs/warm.log", "w") as log:
        subprocess.Popen(
            [sys.executable, "-m", "tokenforge.warm", "serve", "--socket", str(path), "--parent-pid", str(os.getpid()),
             *(["--with", *TEXT_PRELOAD] if MULTIMODAL else [])],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    os.environ[ENV] = str(path)
    WARM_SOCKET = path


def warm_stop():
    if WARM_SOCKET is not None:
        from tokenforge.warm import ENV, stop

        stop(WARM_SOCKET)
        os.environ.pop(ENV, None)
