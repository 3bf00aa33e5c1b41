defmodule ClusterSRV.Integration.DNSProxyTest do
  # The fault-injecting DNS proxy the chaos run stands between the pods and BIND: each fault it
  # injects, asked from inside a pod sandbox as a pod asks, and the rules that keep its faults
  # ones a correct client can tell from the truth.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :netns

  alias ClusterSRV.Harness.{DNS, DNSMessage, DNSProxy, Netns, Network, Zone}

  @service Zone.service("web", "default",
             pods: [{"web-0", {10, 244, 0, 50}}, {"web-1", {10, 244, 0, 51}}]
           )
  @name "web.default.svc.cluster.local"
  @target "web-0.web.default.svc.cluster.local"
  @client_timeout 300

  setup_all do
    # No guard in the way: each test's faults apply however long its key has been failing.
    network =
      Network.start!(proxy: [seed: 1, client_timeout: @client_timeout, max_failing: 600_000])

    DNS.put_service(Network.dns(network), @service)
    sandbox = Network.sandbox!(network, "client")
    # The address of the proxies tests start of their own.
    Netns.ip!(network.ns, ~w(addr add 10.96.0.12/32 dev lo))

    on_exit(fn -> Network.stop(network) end)
    %{network: network, proxy: Network.proxy(network), sandbox: sandbox}
  end

  setup %{proxy: proxy} do
    DNSProxy.set_faults(proxy, [])
    DNSProxy.resume_faults(proxy)
    :ok
  end

  # A query from inside the sandbox to the cluster DNS (or `to`): the parsed answer, or :timeout.
  defp ask(sandbox, name, type, opts \\ []) do
    to = Keyword.get(opts, :to, Network.dns_ip())
    query = DNSMessage.query(:rand.uniform(0xFFFF), name, type)
    netns = [netns: "/var/run/netns/" <> sandbox.ns]
    timeout = Keyword.get(opts, :timeout, 1_000)

    reply =
      case Keyword.get(opts, :transport, :udp) do
        :udp ->
          {:ok, socket} = :gen_udp.open(0, [:binary, active: false] ++ netns)
          :ok = :gen_udp.send(socket, to, 53, query)
          reply = :gen_udp.recv(socket, 0, timeout)
          :gen_udp.close(socket)
          with {:ok, {_, _, bytes}} <- reply, do: {:ok, bytes}

        :tcp ->
          {:ok, socket} = :gen_tcp.connect(to, 53, [:binary, packet: 2, active: false] ++ netns)
          :ok = :gen_tcp.send(socket, query)
          reply = :gen_tcp.recv(socket, 0, timeout)
          :gen_tcp.close(socket)
          reply
      end

    case reply do
      {:ok, bytes} ->
        {:ok, message} = DNSMessage.parse(bytes)
        message

      {:error, :timeout} ->
        :timeout
    end
  end

  defp targets(message),
    do: message.answers |> Enum.map(&DNSMessage.srv_target(message, &1)) |> Enum.sort()

  defp additional_types(message), do: Enum.map(message.additional, & &1.type) |> Enum.sort()

  defp only(proxy, kind), do: DNSProxy.set_faults(proxy, [{kind, 1.0}])

  # Runs `fun` with a proxy of the test's own at 10.96.0.12, in front of the same BIND.
  defp with_proxy(network, opts, fun) do
    proxy =
      DNSProxy.start!(
        [netns: network.ns, ip: {10, 96, 0, 12}, upstream: {{10, 96, 0, 11}, 53}] ++ opts
      )

    try do
      fun.(fn sandbox, name, type -> ask(sandbox, name, type, to: {10, 96, 0, 12}) end)
    after
      DNSProxy.stop(proxy)
    end
  end

  test "with no faults, it answers as BIND does, over UDP and TCP", %{sandbox: sandbox} do
    bind = ask(sandbox, @name, :srv, to: {10, 96, 0, 11})

    for transport <- [:udp, :tcp] do
      proxied = ask(sandbox, @name, :srv, transport: transport)
      assert DNSMessage.rcode(proxied) == :noerror
      assert targets(proxied) == targets(bind)
      assert additional_types(proxied) == additional_types(bind)
      assert Enum.count(proxied.additional, &(&1.type == :a and &1.name =~ "web-")) == 2
    end
  end

  test "drop: no answer at all", %{proxy: proxy, sandbox: sandbox} do
    only(proxy, :drop)
    assert ask(sandbox, @name, :srv, timeout: 500) == :timeout
    assert ask(sandbox, @name, :srv, transport: :tcp, timeout: 500) == :timeout
  end

  test "delay: BIND's answer, past the client's timeout", %{proxy: proxy, sandbox: sandbox} do
    only(proxy, :delay)
    assert ask(sandbox, @name, :srv, timeout: @client_timeout) == :timeout
    started = System.monotonic_time(:millisecond)
    assert %{answers: [_, _]} = ask(sandbox, @name, :srv, timeout: 2_000)
    assert System.monotonic_time(:millisecond) - started >= @client_timeout + 300
  end

  test "udp_truncate: TC set and half the records over UDP; TCP is left alone", %{
    proxy: proxy,
    sandbox: sandbox
  } do
    only(proxy, :udp_truncate)
    cut = ask(sandbox, @name, :srv)
    assert DNSMessage.truncated?(cut)
    assert length(cut.answers) == 1 and cut.additional == []

    whole = ask(sandbox, @name, :srv, transport: :tcp)
    refute DNSMessage.truncated?(whole)
    assert length(whole.answers) == 2
  end

  test "tcp_truncate: over TCP, NOERROR with TC and no records, as BIND answers an answer too large",
       %{proxy: proxy, sandbox: sandbox} do
    only(proxy, :tcp_truncate)
    cut = ask(sandbox, @name, :srv, transport: :tcp)
    assert DNSMessage.rcode(cut) == :noerror and DNSMessage.truncated?(cut)
    assert cut.answers == [] and cut.additional == []

    refute DNSMessage.truncated?(ask(sandbox, @name, :srv))
  end

  test "strip_additional and no_additional_a: an SRV answer without its addresses", %{
    proxy: proxy,
    sandbox: sandbox
  } do
    for kind <- [:strip_additional, :no_additional_a] do
      only(proxy, kind)
      answer = ask(sandbox, @name, :srv)

      assert length(answer.answers) == 2 and not Enum.any?(answer.additional, &(&1.type == :a)),
             inspect(kind)

      # Other types' answers have no additional section to change.
      assert %{answers: [_, _]} = ask(sandbox, @name, :a)
    end
  end

  test "servfail and refused: that code and no records", %{proxy: proxy, sandbox: sandbox} do
    for kind <- [:servfail, :refused] do
      only(proxy, kind)
      answer = ask(sandbox, @name, :srv)
      assert DNSMessage.rcode(answer) == kind and answer.answers == []
    end
  end

  describe "nxdomain" do
    test "answers an SRV target's address query that a listed target makes", %{
      proxy: proxy,
      sandbox: sandbox
    } do
      # The SRV answer lists the target, unchanged (no fault applies to it alone).
      assert %{answers: [_, _]} = ask(sandbox, @name, :srv)
      only(proxy, :nxdomain)
      assert DNSMessage.rcode(ask(sandbox, @target, :a)) == :nxdomain
    end

    test "answers one type of a name another of whose types was just answered with records", %{
      proxy: proxy,
      sandbox: sandbox
    } do
      assert %{answers: [_, _]} = ask(sandbox, @name, :a)
      only(proxy, :nxdomain)
      assert DNSMessage.rcode(ask(sandbox, @name, :srv)) == :nxdomain
    end

    test "is never given for a name none of whose types answered in the poll", %{
      network: network,
      proxy: proxy
    } do
      # A client no SRV answer listed the name to, and that asked no other type of it.
      sandbox = Network.sandbox!(network, "fresh")
      since = System.monotonic_time(:millisecond)
      only(proxy, :nxdomain)
      answer = ask(sandbox, "web-1.web.default.svc.cluster.local", :a)
      assert DNSMessage.rcode(answer) == :noerror and length(answer.answers) == 1
      assert DNSMessage.rcode(ask(sandbox, @name, :srv)) == :noerror
      assert DNSProxy.injected(proxy, since) == []
    end
  end

  test "an outage of one type fails every query of it, and only of it, for its time", %{
    proxy: proxy,
    sandbox: sandbox
  } do
    DNSProxy.outage(proxy, :srv, 600)
    assert DNSMessage.rcode(ask(sandbox, @name, :srv)) == :servfail
    assert %{answers: [_, _]} = ask(sandbox, @name, :a)
    Process.sleep(650)
    assert %{answers: [_, _]} = ask(sandbox, @name, :srv)
  end

  test "no name and type fails for longer than max_failing: then BIND's answer passes", %{
    network: network,
    sandbox: sandbox
  } do
    with_proxy(network, [faults: [servfail: 1.0], max_failing: 500], fn ask ->
      assert DNSMessage.rcode(ask.(sandbox, @name, :srv)) == :servfail
      Process.sleep(600)
      assert %{answers: [_, _]} = ask.(sandbox, @name, :srv)
      assert DNSMessage.rcode(ask.(sandbox, @name, :srv)) == :servfail
      # Each name and type on its own: this one has just started failing.
      assert DNSMessage.rcode(ask.(sandbox, @name, :a)) == :servfail
    end)
  end

  test "pause_faults: every answer is BIND's until resume_faults", %{
    proxy: proxy,
    sandbox: sandbox
  } do
    only(proxy, :servfail)
    DNSProxy.pause_faults(proxy)
    assert %{answers: [_, _]} = ask(sandbox, @name, :srv)
    DNSProxy.resume_faults(proxy)
    assert DNSMessage.rcode(ask(sandbox, @name, :srv)) == :servfail
  end

  test "a seed replays the fault schedule of each client, name and type", %{
    network: network,
    sandbox: sandbox
  } do
    schedule = fn seed ->
      with_proxy(network, [seed: seed, faults: [servfail: 0.5]], fn ask ->
        for _ <- 1..24, do: DNSMessage.rcode(ask.(sandbox, @name, :srv))
      end)
    end

    first = schedule.(7)
    assert Enum.sort(Enum.uniq(first)) == [:noerror, :servfail]
    assert schedule.(7) == first
    assert schedule.(8) != first
  end

  test "counts what it injected by kind, and keeps each with its client, name and type", %{
    network: network
  } do
    sandbox = Network.sandbox!(network, "count")
    proxy = Network.proxy(network)
    since = System.monotonic_time(:millisecond)
    before = DNSProxy.counts(proxy)
    only(proxy, :refused)
    for _ <- 1..3, do: ask(sandbox, @name, :srv)

    assert Map.get(DNSProxy.counts(proxy), :refused, 0) - Map.get(before, :refused, 0) == 3

    assert [%{kind: :refused, name: @name, type: :srv, transport: :udp, client: client} | _] =
             DNSProxy.injected(proxy, since)

    assert client == sandbox.ip
  end
end
