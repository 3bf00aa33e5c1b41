defmodule ClusterSRV.Integration.TargetAddressesTest do
  # node_naming: :ip against a real BIND whose SRV answers carry no address (minimal
  # responses), so that each target's address is asked on its own: a target whose queries the
  # server drops, one with no A record but an AAAA record (a negative A answer), ones with
  # neither, and ones with an A record. A failed address lookup must never read as "no
  # address", and a failed A query must never fall back to AAAA.
  use ExUnit.Case, async: false

  @moduletag :integration

  alias ClusterSRV.Harness.DNS
  alias ClusterSRV.Resolver

  @domain "fill.default.svc.cluster.local"
  @name "#{@domain}."
  @dropped "drop-0.#{@domain}"

  setup_all do
    targets = ~w(v4-0 dual-0 v6-0 none-0 gone-0 drop-0)

    dns =
      DNS.start!(
        minimal_responses: true,
        drops: true,
        extra:
          for(target <- targets, do: {@name, :srv, {0, 16, 4370, "#{target}.#{@name}"}}) ++
            [
              {"v4-0.#{@name}", :a, {127, 0, 0, 5}},
              {"dual-0.#{@name}", :a, {127, 0, 0, 6}},
              {"dual-0.#{@name}", :aaaa, {0xFD00, 0, 0, 0, 0, 0, 0, 6}},
              {"v6-0.#{@name}", :aaaa, {0xFD00, 0, 0, 0, 0, 0, 0, 7}},
              {"none-0.#{@name}", :txt, "a name with no address"},
              {"#{@dropped}.", :a, {127, 0, 0, 9}}
            ]
      )

    on_exit(fn -> DNS.stop(dns) end)
    %{dns: dns}
  end

  setup %{dns: dns} do
    drop!(dns)
    on_exit(fn -> undrop!(dns) end)
  end

  # While dropped: the answer names three pods and leaves three unresolved, in answer order.
  @while_dropped %{
    records: 6,
    tcp: false,
    nodes: [:"app@127.0.0.6", :"app@127.0.0.5", :"app@fd00::7"],
    rejected: [],
    unresolved: [
      {@dropped, :timeout},
      {"gone-0.#{@domain}", :no_records},
      {"none-0.#{@domain}", :no_records}
    ],
    by_target: [
      {"dual-0.#{@domain}", :"app@127.0.0.6"},
      {"v4-0.#{@domain}", :"app@127.0.0.5"},
      {"v6-0.#{@domain}", :"app@fd00::7"}
    ]
  }

  @answered_again %{
    records: 6,
    tcp: false,
    nodes: [:"app@127.0.0.9", :"app@127.0.0.6", :"app@127.0.0.5", :"app@fd00::7"],
    rejected: [],
    unresolved: [{"gone-0.#{@domain}", :no_records}, {"none-0.#{@domain}", :no_records}],
    by_target: [
      {@dropped, :"app@127.0.0.9"},
      {"dual-0.#{@domain}", :"app@127.0.0.6"},
      {"v4-0.#{@domain}", :"app@127.0.0.5"},
      {"v6-0.#{@domain}", :"app@fd00::7"}
    ]
  }

  test "the native poll: a dropped A query is unresolved with :timeout, a negative A answer " <>
         "asks AAAA, neither is :no_records; the same resolver names the pod once DNS answers",
       %{dns: dns} do
    {:ok, resolver} = Resolver.new(nameservers: [DNS.nameserver(dns)], timeout: 300, attempts: 2)
    source = {@name, :srv, "app", @domain, :ip}

    poll = fn ->
      ref = Resolver.async_discover_all(resolver, [source], 1_000)
      assert_receive {:cluster_srv_lookup, ^ref, {:ok, [result]}}, 5_000
      result
    end

    assert poll.() == {:ok, @while_dropped}

    # lookup/3 still returns every record; an unresolved target's has no address.
    assert {:ok, records} = Resolver.lookup(resolver, @name, fill_addresses: true)
    addresses = Map.new(records, &{&1.target, &1.addresses})
    assert addresses[@dropped] == []
    assert addresses["v6-0.#{@domain}"] == [{0xFD00, 0, 0, 0, 0, 0, 0, 7}]
    assert addresses["dual-0.#{@domain}"] == [{127, 0, 0, 6}]

    undrop!(dns)
    assert poll.() == {:ok, @answered_again}
    drop!(dns)
    assert poll.() == {:ok, @while_dropped}
  end

  @tag :tmp_dir
  test "a resolver function's poll follows the same rule through :inet, on one Lookup",
       %{dns: dns, tmp_dir: tmp_dir} do
    # In a VM of its own, whose resolver settings (global to a VM) point at this BIND. It polls,
    # waits for a line on stdin, and polls again with the same Lookup.
    inetrc = Path.join(tmp_dir, "inetrc")

    File.write!(inetrc, """
    {resolv_conf, ""}.
    {hosts_file, ""}.
    {nameserver, {127,0,0,1}, #{dns.port}}.
    {lookup, [dns]}.
    {timeout, 300}.
    {retry, 1}.
    """)

    script = ~S"""
    {config, _} =
      ClusterSRV.Config.strategy!(
        service: "fill", namespace: "default", cluster_domain: "cluster.local.",
        application_name: "app", node_naming: :ip,
        resolver: &:inet_res.getbyname(&1, :srv)
      )

    poll = fn lookup ->
      {:ok, lookup} = ClusterSRV.Lookup.start(lookup)

      receive do
        message ->
          {:done, [{_source, result}], _, lookup} = ClusterSRV.Lookup.handle_info(lookup, message)
          IO.puts("result: " <> inspect(result, limit: :infinity))
          lookup
      end
    end

    lookup = poll.(ClusterSRV.Lookup.new!(config))
    IO.gets("")
    poll.(lookup)
    """

    port =
      Port.open(
        {:spawn_executable, System.find_executable("elixir")},
        [
          :binary,
          :exit_status,
          line: 65_536,
          args: ["-pa", Path.join(Mix.Project.app_path(), "ebin"), "-e", script],
          env: [{~c"ERL_INETRC", String.to_charlist(inetrc)}]
        ]
      )

    assert read_result(port) == {:ok, @while_dropped}
    undrop!(dns)
    Port.command(port, "go\n")
    assert read_result(port) == {:ok, @answered_again}
    assert_receive {^port, {:exit_status, 0}}, 5_000
  end

  defp read_result(port) do
    receive do
      {^port, {:data, {:eol, "result: " <> result}}} ->
        {value, []} = Code.eval_string(result)
        value

      {^port, {:data, {_, other}}} ->
        flunk("the VM said: #{other}")

      {^port, {:exit_status, status}} ->
        flunk("the VM exited with #{status}")
    after
      15_000 -> flunk("no result from the VM")
    end
  end

  # The server drops every query for the target, or answers it again; both wait until it does.
  defp drop!(dns) do
    DNS.drop(dns, @dropped)
    await_answer(dns, :timeout)
  end

  defp undrop!(dns) do
    DNS.undrop(dns, @dropped)
    await_answer(dns, :answered)
  end

  defp await_answer(dns, expected, tries \\ 50) do
    answer =
      case :inet_res.resolve(String.to_charlist(@dropped), :in, :a,
             nameservers: [{{127, 0, 0, 1}, dns.port}],
             timeout: 100,
             retry: 1
           ) do
        {:error, :timeout} -> :timeout
        _ -> :answered
      end

    cond do
      answer == expected -> :ok
      tries == 0 -> flunk("the server never became #{expected} for #{@dropped}")
      true -> await_answer(dns, expected, tries - 1)
    end
  end
end
