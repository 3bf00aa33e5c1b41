defmodule ClusterSRV.Bench.InetCache do
  @moduledoc """
  What `:inet_res.getbyname/2`, the lookup of libcluster's DNSSRV, returns for a large SRV
  answer once the VM's DNS cache (`inet_db`) is full. The cache holds 100 records by default
  and, when full, drops its least recently used tenth, record by record: a cached SRV set can
  lose part of its records, and getbyname then answers with the part that is left.

  In a fresh VM resolving through the benchmark's BIND (`ERL_INETRC`), each round looks the
  service up, then looks up each target's A record with `:inet_res` (as a node whose host
  lookups go through `:inet_res` does before its connects), then looks the service up again.
  Rounds are 0.7 s apart, so the 5 s TTL expires along the way. Returns the counts of both
  lookups of every round and the count DNS lists.
  """

  @doc false
  def run(dns, service, listed) do
    dir = ClusterSRV.Harness.Watchdog.tmp_dir("cluster_srv_bench_inet_cache")
    inetrc = ClusterSRV.Harness.DNS.write_inetrc!(dns, Path.join(dir, "inetrc"))
    name = "#{service}.default.svc.cluster.local"

    code = """
    counts =
      for _ <- 1..8 do
        {:ok, {:hostent, _, _, :srv, _, first}} = :inet_res.getbyname(#{inspect(String.to_charlist(name))}, :srv)
        for {_, _, _, target} <- first, do: :inet_res.getbyname(target, :a)
        {:ok, {:hostent, _, _, :srv, _, again}} = :inet_res.getbyname(#{inspect(String.to_charlist(name))}, :srv)
        Process.sleep(700)
        "\#{length(first)},\#{length(again)}"
      end

    IO.puts("COUNTS " <> Enum.join(counts, " "))
    """

    try do
      {output, 0} =
        System.cmd("elixir", ["-e", code], env: [{"ERL_INETRC", inetrc}], stderr_to_stdout: true)

      [_, counts] = Regex.run(~r/^COUNTS (.*)$/m, output)

      rounds =
        for pair <- String.split(counts) do
          [first, again] = String.split(pair, ",")
          {String.to_integer(first), String.to_integer(again)}
        end

      returned = Enum.flat_map(rounds, fn {a, b} -> [a, b] end)
      IO.puts("    getbyname of #{listed} records returned #{inspect(rounds)}")
      %{listed: listed, rounds: rounds, fewest: Enum.min(returned)}
    after
      File.rm_rf(dir)
    end
  end
end
