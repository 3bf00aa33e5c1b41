defmodule ClusterSRV.Harness.Janitor do
  @moduledoc """
  Removes the namespaces and files a VM made, even when that VM is killed with SIGKILL.

  The janitor is a port running a small `sh` script. The harness tells it, before making each
  thing, what it is about to make (one line on the port's stdin: `ns <name>` or `dir <path>`).
  When its stdin reaches end of file, because the owner closed the port or because the VM
  died and the kernel closed the pipe, the script kills every process still running in each
  namespace (an epmd daemon outlives its VM), deletes the namespaces, and removes the
  directories and each namespace's `/etc/netns` entry. It is the `ClusterSRV.Harness.Watchdog`
  pattern, for things that are not processes.

      janitor = ClusterSRV.Harness.Janitor.start!()
      ClusterSRV.Harness.Janitor.track(janitor, :ns, "csrv-71234567-42-net")
      # ... ip netns add csrv-71234567-42-net ...
      ClusterSRV.Harness.Janitor.finish(janitor)   # everything tracked is gone

  The port belongs to the process that starts it; when that process exits, the port closes
  and the janitor cleans up.
  """

  alias ClusterSRV.Harness.Watchdog

  # It must outlive the VM that started it and finish its work, so it ignores the signals a
  # dying process group gets, never writes to the closed pipe, and acts only on end of file.
  @script ~S"""
  trap '' HUP INT TERM PIPE
  exec >/dev/null 2>&1
  ip=$1
  nss=
  dirs=
  while read -r kind arg; do
    case "$kind" in
      ns) nss="$arg $nss" ;;
      dir) dirs="$dirs $arg" ;;
    esac
  done
  tries=0
  while [ "$tries" -lt 50 ]; do
    left=
    for ns in $nss; do
      pids=$("$ip" netns pids "$ns" 2>/dev/null)
      if [ -n "$pids" ]; then kill -KILL $pids; left=1; fi
    done
    [ -z "$left" ] && break
    tries=$((tries + 1))
    sleep 0.1
  done
  for ns in $nss; do
    "$ip" netns del "$ns"
    rm -rf "/etc/netns/$ns"
  done
  for dir in $dirs; do rm -rf "$dir"; done
  """

  @doc "Starts a janitor owned by the calling process."
  def start! do
    name = "cluster_srv_janitor_#{System.get_env("CLUSTER_SRV_RUN", "adhoc")}_#{System.pid()}"

    Port.open({:spawn_executable, "/bin/sh"}, [
      :binary,
      :exit_status,
      {:args, ["-c", @script, name, ClusterSRV.Harness.Netns.ip()]}
    ])
  end

  @doc """
  Records a namespace (`:ns`) or a directory (`:dir`) to remove at the end. Call it before
  making the thing, so that nothing exists that the janitor does not know of.
  """
  def track(port, kind, value) when kind in [:ns, :dir] do
    if String.contains?(value, ["\n", " "]),
      do: raise(ArgumentError, "bad name #{inspect(value)}")

    true = Port.command(port, "#{kind} #{value}\n")
    :ok
  end

  @doc "Closes the janitor's stdin and waits until it has removed everything it tracked."
  def finish(port), do: Watchdog.close(port, 30_000)
end
