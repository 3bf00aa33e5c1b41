defmodule ClusterSRV.Harness.Netns do
  @moduledoc """
  Network namespaces, veth pairs and nftables rules, through `ip` and `nft`, as a CNI plugin
  and kubelet set them up. Everything here needs root on Linux.

  Names carry the run (`CLUSTER_SRV_RUN`, set by `make test`, or the VM's OS pid), so that a
  run can check it left no namespace behind, and so that runs never collide:

      ns = ClusterSRV.Harness.Netns.name("pod3")   #=> "csrv-71234567-42-pod3"
      :ok = ClusterSRV.Harness.Netns.add!(ns)
      ClusterSRV.Harness.Netns.ip!(ns, ~w(link set lo up))
      ClusterSRV.Harness.Netns.cmd!(ns, ~w(hostname))
      ClusterSRV.Harness.Netns.delete(ns)

  Processes are started in a namespace with `exec_args/2` (`ip netns exec`, which also mounts
  `/etc/netns/<ns>/*` over `/etc`). `ClusterSRV.Harness.Janitor` removes what a VM made if it
  dies before it could.
  """

  @doc """
  Why the namespace cluster cannot run here, or `nil` when it can. It creates and deletes a
  probe namespace, so the answer is what this machine really allows.
  """
  def unavailable_reason do
    cond do
      :os.type() != {:unix, :linux} ->
        "network namespaces need Linux"

      System.find_executable("ip") == nil and not File.exists?("/usr/sbin/ip") ->
        "`ip` (iproute2) is not installed"

      nft() == nil ->
        "nftables is not installed (run `make setup`)"

      System.find_executable("unshare") == nil ->
        "`unshare` (util-linux) is not installed"

      true ->
        probe = "csrv-probe-#{System.pid()}-#{System.unique_integer([:positive])}"

        case System.cmd(ip(), ["netns", "add", probe], stderr_to_stdout: true) do
          {_, 0} ->
            System.cmd(ip(), ["netns", "del", probe], stderr_to_stdout: true)
            nil

          {output, _} ->
            "`ip netns add` failed (root is needed): #{String.trim(output)}"
        end
    end
  end

  @doc """
  The short tag of this run that every name carries: the last 8 characters of
  `CLUSTER_SRV_RUN`, or `p<os pid>` without it. Interface names are limited to 15 octets and
  namespace names end up in paths, so it stays short.
  """
  def run_tag do
    case System.get_env("CLUSTER_SRV_RUN") do
      run when is_binary(run) and run != "" ->
        run |> String.downcase() |> String.replace(~r/[^a-z0-9]/, "") |> String.slice(-8, 8)

      _ ->
        "p#{System.pid()}"
    end
  end

  @doc "A namespace name unique to this run: `csrv-<run tag>-<n>-<kind>`."
  def name(kind), do: "csrv-#{run_tag()}-#{System.unique_integer([:positive])}-#{kind}"

  @doc "The namespace's file, for the `netns` socket option of `:gen_tcp` and `:gen_udp`."
  def path(ns), do: "/var/run/netns/" <> ns

  @doc "The directory whose files `ip netns exec` mounts over `/etc` in the namespace."
  def etc_dir(ns), do: "/etc/netns/" <> ns

  @doc "Creates the namespace, with its loopback up."
  def add!(ns) do
    run!(ip(), ["netns", "add", ns])
    ip!(ns, ~w(link set lo up))
    :ok
  end

  @doc """
  Ends every process in the namespace (an epmd daemon outlives its VM), deletes the namespace
  and its `/etc/netns` directory. Deleting a namespace also deletes its end of every veth pair.
  """
  def delete(ns) do
    kill_all(ns)
    System.cmd(ip(), ["netns", "del", ns], stderr_to_stdout: true)
    File.rm_rf(etc_dir(ns))
    :ok
  end

  @doc "Sends SIGKILL to every process in the namespace and waits until none is left."
  def kill_all(ns, tries \\ 50)

  def kill_all(_ns, 0), do: :ok

  def kill_all(ns, tries) do
    case pids(ns) do
      [] ->
        :ok

      pids ->
        System.cmd("kill", ["-KILL" | pids], stderr_to_stdout: true)
        Process.sleep(20)
        kill_all(ns, tries - 1)
    end
  end

  @doc "The OS pids of the processes in the namespace, as strings."
  def pids(ns) do
    case System.cmd(ip(), ["netns", "pids", ns], stderr_to_stdout: true) do
      {output, 0} -> String.split(output)
      {_, _} -> []
    end
  end

  @doc "The namespaces of a run (by default this one) that exist now."
  def leftovers(tag \\ run_tag()) do
    {output, _} = System.cmd(ip(), ["netns", "list"], stderr_to_stdout: true)

    for line <- String.split(output, "\n", trim: true),
        [ns | _] = String.split(line),
        String.starts_with?(ns, "csrv-#{tag}-"),
        do: ns
  end

  @doc "Runs `ip -n <ns> ...` and raises if it fails."
  def ip!(ns, args), do: run!(ip(), ["-n", ns | args])

  @doc "Runs a command inside the namespace and returns its output; raises if it fails."
  def cmd!(ns, [executable | args]), do: run!(ip(), ["netns", "exec", ns, executable | args])

  @doc "Runs a command inside the namespace: `{output, exit status}`."
  def cmd(ns, [executable | args]),
    do: System.cmd(ip(), ["netns", "exec", ns, executable | args], stderr_to_stdout: true)

  @doc """
  The `{executable, args}` that run `argv` inside the namespace. `ip netns exec` execs the
  command, so a signal sent to the returned process reaches the command itself.
  """
  def exec_args(ns, argv), do: {ip(), ["netns", "exec", ns | argv]}

  @doc "Loads an nftables ruleset (in `nft -f` syntax) into the namespace."
  def nft!(ns, ruleset) do
    path = Path.join(System.tmp_dir!(), "csrv-nft-#{System.unique_integer([:positive])}.nft")
    File.write!(path, ruleset)

    try do
      cmd!(ns, [nft(), "-f", path])
    after
      File.rm(path)
    end
  end

  @doc "Deletes an nftables table in the namespace, if it exists."
  def nft_delete_table(ns, family, table) do
    cmd(ns, [nft(), "delete", "table", family, table])
    :ok
  end

  @doc "The packets counted by the `counter` statements of a table, summed."
  def nft_counted(ns, family, table) do
    case cmd(ns, [nft(), "list", "table", family, table]) do
      {output, 0} ->
        ~r/counter packets (\d+)/
        |> Regex.scan(output)
        |> Enum.map(fn [_, n] -> String.to_integer(n) end)
        |> Enum.sum()

      {_, _} ->
        0
    end
  end

  defp run!(executable, args) do
    case System.cmd(executable, args, stderr_to_stdout: true) do
      {output, 0} ->
        output

      {output, status} ->
        raise "#{Enum.join([executable | args], " ")} failed (#{status}): #{String.trim(output)}"
    end
  end

  @doc false
  def ip, do: find("ip")

  @doc false
  def nft, do: find("nft")

  # /usr/sbin is not on every PATH, though root has it.
  defp find(name) do
    System.find_executable(name) ||
      Enum.find(["/usr/sbin/#{name}", "/sbin/#{name}"], &File.exists?/1)
  end
end
