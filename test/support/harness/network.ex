defmodule ClusterSRV.Harness.Network do
  @moduledoc """
  A Kubernetes cluster network, built the way a CNI plugin builds one, with its cluster DNS.

  One network namespace is the cluster network. It holds a bridge, `br0`, at 10.244.0.1/24,
  and on its loopback the DNS service address 10.96.0.10, where a real BIND9
  (`ClusterSRV.Harness.DNS`) serves the CoreDNS-shaped `cluster.local` on port 53. Each pod
  sandbox is a namespace of its own with one end of a veth pair (`eth0`, 10.244.0.N/24) and the
  other end on the bridge, and a route to the service range 10.96.0.0/12 through the bridge.
  A sandbox made with `ipv6: true` also holds the unique local address fd00:10:244::N/64 on
  its `eth0` (the same N), as a dual-stack CNI gives a pod; the DNS stays on IPv4.
  Nothing links the cluster namespace to the host's, and it has no route out, so no packet
  leaves the namespaces.

      net = ClusterSRV.Harness.Network.start!()
      sandbox = ClusterSRV.Harness.Network.sandbox!(net, "pod")
      sandbox.ip   #=> {10, 244, 0, 10}
      ClusterSRV.Harness.Network.cut(net, sandbox)      # the pod is partitioned off
      ClusterSRV.Harness.Network.restore(net, sandbox)
      ClusterSRV.Harness.Network.drop_dns(net, 30)      # 30 % of DNS datagrams are lost
      ClusterSRV.Harness.Network.stop(net)

  Faults it plays: a partition (the veth link down, or nftables rules that drop the pod's
  traffic), a share of DNS datagrams dropped (nftables `numgen random`), the DNS stopped and
  started (`ClusterSRV.Harness.DNS.pause/1` and `resume/1` on `dns/1`), per-node caching
  DNS servers (`start_cache!/2`) that serve answers up to 30 s stale, and, with `proxy:`,
  partial faults per query (`ClusterSRV.Harness.DNSProxy`): BIND then listens on a hidden
  address, 10.96.0.11, where dynamic updates still go, and the proxy at 10.96.0.10 forwards the
  pods' queries to it.

      net = ClusterSRV.Harness.Network.start!(proxy: [seed: 7, faults: [drop: 0.05]])
      ClusterSRV.Harness.DNSProxy.counts(ClusterSRV.Harness.Network.proxy(net))

  The network is a process linked to its caller. It records every namespace it makes with a
  `ClusterSRV.Harness.Janitor` first, so nothing it made survives it, even if the VM is killed.
  """
  use GenServer

  alias ClusterSRV.Harness.{DNS, DNSProxy, Janitor, Netns}

  defstruct [:pid, :ns, :dns, :proxy]

  @type t :: %__MODULE__{pid: pid(), ns: String.t(), dns: DNS.t(), proxy: DNSProxy.t() | nil}

  defmodule Sandbox do
    @moduledoc "A pod's network namespace: its name, its address, and its veth on the bridge."
    defstruct [:ns, :ip, :ip6, :veth]

    @type t :: %__MODULE__{
            ns: String.t(),
            ip: :inet.ip4_address(),
            ip6: :inet.ip6_address() | nil,
            veth: String.t()
          }
  end

  @dns_ip {10, 96, 0, 10}
  # Where BIND listens behind a proxy: in the cluster network only, never in a pod's resolv.conf.
  @hidden_dns_ip {10, 96, 0, 11}
  @gateway {10, 244, 0, 1}
  @service_range "10.96.0.0/12"

  @doc "The cluster DNS's service address."
  def dns_ip, do: @dns_ip

  @doc """
  Builds the cluster network and starts its DNS. Options: `:services` and `:extra`, passed to
  `ClusterSRV.Harness.DNS.start!/1`; `:proxy`, the options of `ClusterSRV.Harness.DNSProxy`
  (`true` for none): BIND listens at 10.96.0.11 and a fault-injecting proxy at the service
  address.
  """
  def start!(opts \\ []) do
    {:ok, pid} = GenServer.start_link(__MODULE__, opts)
    GenServer.call(pid, :info)
  end

  @doc "Stops the DNS servers and removes every namespace and file the network made."
  def stop(%__MODULE__{pid: pid}) do
    GenServer.stop(pid, :normal, 60_000)
  catch
    :exit, _ -> :ok
  end

  @doc """
  The cluster DNS (a `ClusterSRV.Harness.DNS`): BIND, where dynamic updates go, at the service
  address or, with a proxy, behind it.
  """
  def dns(%__MODULE__{dns: dns}), do: dns

  @doc "The fault-injecting proxy at the service address (`ClusterSRV.Harness.DNSProxy`), or nil."
  def proxy(%__MODULE__{proxy: proxy}), do: proxy

  @doc """
  Makes a pod sandbox: a namespace (`csrv-<run>-<n>-<kind>`) on the bridge with the next free
  address. Pass `ip: false` for a namespace with no link at all, and `ipv6: true` for a pod
  that also has an IPv6 address (`sandbox.ip6`).
  """
  def sandbox!(%__MODULE__{pid: pid}, kind, opts \\ []),
    do: GenServer.call(pid, {:sandbox, kind, opts}, 30_000)

  @doc """
  Ends every process in the sandbox and deletes it, as a pod's sandbox goes when it dies. Its
  veth pair goes first, at once: the kernel frees a deleted namespace, and the veth end in it,
  only once nothing holds it any more (a socket the test VM opened there) and then in the
  background, so the bridge's end would outlive the sandbox for a while.
  """
  def remove_sandbox(%__MODULE__{pid: pid}, %Sandbox{} = sandbox),
    do: GenServer.call(pid, {:remove, sandbox}, 30_000)

  @doc "Has the network's janitor remove `dir` when the network goes, even if the VM is killed."
  def track_dir(%__MODULE__{pid: pid}, dir), do: GenServer.call(pid, {:track_dir, dir})

  @doc "An address on the pod network that no sandbox holds and none ever will."
  def unheld_ip(%__MODULE__{pid: pid}), do: GenServer.call(pid, :unheld_ip)

  @doc "Takes the sandbox's veth link down on the bridge: the pod is cut off from everything."
  def cut(%__MODULE__{ns: net}, %Sandbox{veth: veth}), do: link(net, veth, "down")

  @doc """
  Brings the sandbox's veth link back up, and returns once traffic passes again: once a DNS
  query sent from inside the sandbox is answered. The kernel turns the pod's carrier on and
  resolves the gateway again only after a while (up to a second), and until then the pod's
  packets are still lost, so a test measures from this return.
  """
  def restore(%__MODULE__{ns: net}, %Sandbox{veth: veth} = sandbox) do
    link(net, veth, "up")
    await_reachable(sandbox)
  end

  @doc """
  Waits until a DNS query from inside the sandbox to the cluster DNS is answered, sending one
  every 10 ms from a socket in the sandbox's namespace. Raises after `timeout` ms.
  """
  def await_reachable(%Sandbox{ns: ns}, timeout \\ 10_000) do
    {:ok, socket} = :gen_udp.open(0, [:binary, active: false, netns: Netns.path(ns)])

    try do
      deadline = System.monotonic_time(:millisecond) + timeout
      probe(socket, deadline)
    after
      :gen_udp.close(socket)
    end
  end

  # A query for the SOA of cluster.local, with a fixed ID; any answer to it will do.
  @probe <<0x5EED::16, 0::16, 1::16, 0::16, 0::16, 0::16, 7, "cluster", 5, "local", 0, 6::16,
           1::16>>

  defp probe(socket, deadline) do
    if System.monotonic_time(:millisecond) > deadline,
      do: raise("the sandbox cannot reach the cluster DNS")

    # A send can fail while the link is still down.
    _ = :gen_udp.send(socket, @dns_ip, 53, @probe)

    case :gen_udp.recv(socket, 0, 10) do
      {:ok, {_, _, <<0x5EED::16, _::binary>>}} -> :ok
      _ -> probe(socket, deadline)
    end
  end

  @doc """
  Partitions the sandbox with nftables rules in it, dropping (`:drop`, the default) or
  refusing (`:reject`) everything it sends or receives
  on `eth0`, while its link stays up.
  """
  def block(network, sandbox, how \\ :drop)

  def block(%__MODULE__{}, %Sandbox{ns: ns}, :drop) do
    Netns.nft!(ns, """
    table inet csrv_partition {
      chain in { type filter hook input priority 0; policy accept; iifname "eth0" drop; }
      chain out { type filter hook output priority 0; policy accept; oifname "eth0" drop; }
    }
    """)

    :ok
  end

  # Refused rather than lost: TCP is reset and the rest answered "unreachable", as by a
  # firewall that rejects, so that no connect hangs on either side.
  def block(%__MODULE__{}, %Sandbox{ns: ns}, :reject) do
    Netns.nft!(ns, """
    table inet csrv_partition {
      chain in {
        type filter hook input priority 0; policy accept;
        iifname "eth0" meta l4proto tcp reject with tcp reset
        iifname "eth0" reject with icmpx type admin-prohibited
      }
      chain out {
        type filter hook output priority 0; policy accept;
        oifname "eth0" meta l4proto tcp reject with tcp reset
        oifname "eth0" reject with icmpx type admin-prohibited
      }
    }
    """)

    :ok
  end

  @doc "Removes the rules `block/2` added, and returns once traffic passes again."
  def unblock(%__MODULE__{}, %Sandbox{ns: ns} = sandbox) do
    Netns.nft_delete_table(ns, "inet", "csrv_partition")
    await_reachable(sandbox)
  end

  @doc """
  Drops `percent` % of the DNS datagrams at the cluster DNS, queries and answers each, chosen
  at random (nftables `numgen random`). `drop_dns(net, 0)` ends it.
  """
  def drop_dns(%__MODULE__{ns: net}, 0), do: Netns.nft_delete_table(net, "inet", "csrv_dns_loss")

  def drop_dns(%__MODULE__{ns: net} = network, percent) when percent in 1..100 do
    drop_dns(network, 0)
    share = if percent == 100, do: "", else: "numgen random mod 100 < #{percent} "

    Netns.nft!(net, """
    table inet csrv_dns_loss {
      chain in {
        type filter hook input priority 0; policy accept;
        udp dport 53 #{share}counter drop;
      }
      chain out {
        type filter hook output priority 0; policy accept;
        udp sport 53 #{share}counter drop;
      }
    }
    """)

    :ok
  end

  @doc "How many DNS datagrams `drop_dns/2` has dropped so far."
  def dns_dropped(%__MODULE__{ns: net}), do: Netns.nft_counted(net, "inet", "csrv_dns_loss")

  @doc """
  Starts a caching DNS for one "node": a second BIND on its own service address (10.96.1.N),
  forwarding to the cluster DNS and keeping every answer `cache_ttl` seconds (default 30), as
  NodeLocal DNSCache or CoreDNS's `cache 30` may. Pods whose resolv.conf names it see answers up
  to that old. Returns the cache's `ClusterSRV.Harness.DNS`.
  """
  def start_cache!(%__MODULE__{pid: pid}, opts \\ []),
    do: GenServer.call(pid, {:start_cache, opts}, 30_000)

  # -- The process ------------------------------------------------------------------------------

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    janitor = Janitor.start!()
    ns = Netns.name("net")
    Janitor.track(janitor, :ns, ns)
    Netns.add!(ns)

    # The DNS service address lives on the loopback: `dummy` links are not available here.
    Netns.ip!(ns, ["addr", "add", "#{:inet.ntoa(@dns_ip)}/32", "dev", "lo"])
    # A bridge whose address is not set takes the lowest of its ports', so a new pod's veth
    # could change it and every pod's ARP entry for the gateway would go stale for a while.
    Netns.ip!(ns, ~w(link add br0 address 02:00:0a:f4:00:01 type bridge))
    Netns.ip!(ns, ["addr", "add", "#{:inet.ntoa(@gateway)}/24", "dev", "br0"])
    Netns.ip!(ns, ~w(link set br0 up))

    proxy_opts =
      case Keyword.get(opts, :proxy) do
        nil -> nil
        false -> nil
        true -> []
        proxy_opts -> proxy_opts
      end

    dns_ip = if proxy_opts, do: @hidden_dns_ip, else: @dns_ip

    if proxy_opts,
      do: Netns.ip!(ns, ["addr", "add", "#{:inet.ntoa(@hidden_dns_ip)}/32", "dev", "lo"])

    dns = DNS.start!(Keyword.take(opts, [:services, :extra]) ++ [netns: ns, ip: dns_ip, port: 53])

    Janitor.track(janitor, :dir, dns.dir)

    proxy =
      if proxy_opts,
        do:
          DNSProxy.start!(
            [netns: ns, ip: @dns_ip, port: 53, upstream: {@hidden_dns_ip, 53}] ++ proxy_opts
          )

    {:ok,
     %{
       ns: ns,
       janitor: janitor,
       dns: dns,
       proxy: proxy,
       caches: [],
       sandboxes: %{},
       next_host: 10,
       next_veth: 0
     }}
  end

  @impl true
  def handle_call(:info, _from, state),
    do:
      {:reply, %__MODULE__{pid: self(), ns: state.ns, dns: state.dns, proxy: state.proxy}, state}

  def handle_call({:sandbox, kind, opts}, _from, state) do
    ns = Netns.name(kind)
    Janitor.track(state.janitor, :ns, ns)
    Netns.add!(ns)

    {sandbox, state} =
      if Keyword.get(opts, :ip, true) == false do
        {%Sandbox{ns: ns}, state}
      else
        {ip, state} = next_ip(state)

        veth =
          "v#{kind |> String.replace(~r/[^a-z]/, "") |> String.slice(0, 4)}#{state.next_veth}"

        state = %{state | next_veth: state.next_veth + 1}
        # Made straight into the pod's namespace, as CNI plugins do; the pod's end is eth0.
        Netns.ip!(state.ns, ~w(link add #{veth} type veth peer name eth0 netns #{ns}))
        Netns.ip!(state.ns, ~w(link set #{veth} master br0 up))
        Netns.ip!(ns, ["addr", "add", "#{:inet.ntoa(ip)}/24", "dev", "eth0"])
        Netns.ip!(ns, ~w(link set eth0 up))
        Netns.ip!(ns, ["route", "add", @service_range, "via", "#{:inet.ntoa(@gateway)}"])
        ip6 = if Keyword.get(opts, :ipv6, false), do: add_ip6!(ns, ip)
        {%Sandbox{ns: ns, ip: ip, ip6: ip6, veth: veth}, state}
      end

    {:reply, sandbox, put_in(state.sandboxes[ns], sandbox)}
  end

  def handle_call({:remove, %Sandbox{ns: ns} = sandbox}, _from, state) do
    delete_sandbox(state, sandbox)
    {:reply, :ok, %{state | sandboxes: Map.delete(state.sandboxes, ns)}}
  end

  def handle_call({:track_dir, dir}, _from, state) do
    Janitor.track(state.janitor, :dir, dir)
    {:reply, :ok, state}
  end

  def handle_call(:unheld_ip, _from, state) do
    {ip, state} = next_ip(state)
    {:reply, ip, state}
  end

  def handle_call({:start_cache, opts}, _from, state) do
    ip = {10, 96, 1, length(state.caches) + 1}
    Netns.ip!(state.ns, ["addr", "add", "#{:inet.ntoa(ip)}/32", "dev", "lo"])

    cache =
      DNS.start!(
        netns: state.ns,
        ip: ip,
        port: 53,
        forwarders: [List.to_string(:inet.ntoa(@dns_ip))],
        cache_ttl: Keyword.get(opts, :cache_ttl, 30)
      )

    Janitor.track(state.janitor, :dir, cache.dir)

    {:reply, cache, %{state | caches: [cache | state.caches]}}
  end

  @impl true
  def handle_info(_message, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    if state.proxy, do: DNSProxy.stop(state.proxy)
    Enum.each(state.caches, &DNS.stop/1)
    DNS.stop(state.dns)
    for {_ns, sandbox} <- state.sandboxes, do: delete_sandbox(state, sandbox)
    Netns.delete(state.ns)
    Janitor.finish(state.janitor)
    :ok
  end

  # Deleting one end of a veth pair deletes both at once; the namespace may then linger,
  # unnamed and linkless, until the kernel frees it.
  defp delete_sandbox(state, %Sandbox{ns: ns, veth: veth}) do
    if veth,
      do: System.cmd(Netns.ip(), ["-n", state.ns, "link", "del", veth], stderr_to_stdout: true)

    Netns.delete(ns)
  end

  defp next_ip(%{next_host: host} = state) when host < 255,
    do: {{10, 244, 0, host}, %{state | next_host: host + 1}}

  defp next_ip(_state), do: raise("the pod network 10.244.0.0/24 is full")

  # The pod's ULA, on the same link; `nodad`, so that it is usable at once rather than after
  # duplicate address detection (a second or so), as no other pod can hold it.
  defp add_ip6!(ns, {_, _, _, host}) do
    ip6 = {0xFD00, 0x10, 0x244, 0, 0, 0, 0, host}
    Netns.ip!(ns, ["-6", "addr", "add", "#{:inet.ntoa(ip6)}/64", "dev", "eth0", "nodad"])
    ip6
  end

  defp link(net, veth, updown) do
    Netns.ip!(net, ["link", "set", veth, updown])
    :ok
  end
end
