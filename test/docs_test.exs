defmodule ClusterSRV.DocsTest do
  # Every Elixir snippet in the README and the guides: it parses; every ClusterSRV config in it
  # (a `{ClusterSRV, opts}` child, a libcluster topology naming ClusterSRV.Strategy) passes the
  # strategy's own validation with no unknown key; and the snippets marked
  # `<!-- runs against the test DNS -->` run, against a real BIND. A renamed option can then
  # never leave a stale snippet behind.
  use ExUnit.Case, async: false

  alias ClusterSRV.Harness.{DNS, Zone}

  @docs ["README.md" | Path.wildcard("guides/*.md")]
  @runs "<!-- runs against the test DNS -->"
  @topology_keys [:connect, :disconnect, :list_nodes, :topology, :name]

  for path <- @docs, do: @external_resource(path)

  defp snippets do
    for path <- @docs,
        {before, code} <- blocks(File.read!(path)),
        do: %{
          path: path,
          code: code,
          runs?: String.ends_with?(String.trim_trailing(before), @runs)
        }
  end

  # Each ```elixir block with the text before it.
  defp blocks(text) do
    ~r/```elixir\n(.*?)```/s
    |> Regex.scan(text, return: :index)
    |> Enum.map(fn [{start, _}, {from, length}] ->
      {binary_part(text, 0, start), binary_part(text, from, length)}
    end)
  end

  test "the docs have Elixir snippets, and every one parses" do
    snippets = snippets()
    assert length(snippets) >= 10

    for %{path: path, code: code} <- snippets do
      assert {:ok, _} = Code.string_to_quoted(code), "#{path}: does not parse:\n#{code}"
    end
  end

  test "the README's options table is the moduledocs' own" do
    table = File.read!("lib/cluster_srv/options.md")
    assert File.read!("README.md") =~ table
  end

  test "every relative link in the docs leads to a file of the repository" do
    for path <- ["CONTRIBUTING.md" | @docs],
        [_, target] <- Regex.scan(~r/\]\(([^)#]+)(?:#[^)]*)?\)/, File.read!(path)),
        not String.starts_with?(target, ["http://", "https://"]) do
      resolved = path |> Path.dirname() |> Path.join(target)
      assert File.exists?(resolved), "#{path} links to #{target}, which does not exist"
    end
  end

  test "every ClusterSRV config in the docs passes the strategy's validation" do
    configs =
      for %{path: path, code: code} <- snippets(),
          config <- configs(Code.string_to_quoted!(code)),
          do: {path, code, config}

    assert length(configs) >= 8

    for {path, code, {kind, ast}} <- configs do
      {opts, _} = Code.eval_quoted(ast)

      try do
        case {kind, opts} do
          {:standalone, opts} ->
            if opts[:query] != :ignore do
              {_topology, config} = Keyword.split(opts, @topology_keys)
              assert {_, []} = ClusterSRV.Config.strategy!(config)
            end

          {:strategy, config} ->
            assert {_, []} = ClusterSRV.Config.strategy!(config)
        end
      rescue
        error in [ArgumentError, ExUnit.AssertionError] ->
          flunk("#{path}: #{Exception.message(error)}\nin:\n#{code}")
      end
    end
  end

  # `{ClusterSRV, opts}` children, and `config:` next to `strategy: ClusterSRV.Strategy`.
  defp configs(ast) do
    {_, found} =
      Macro.prewalk(ast, [], fn
        {{:__aliases__, _, [:ClusterSRV]}, opts} = node, found when is_list(opts) ->
          {node, [{:standalone, opts} | found]}

        list, found when is_list(list) ->
          with {:ok, {:__aliases__, _, [:ClusterSRV, :Strategy]}} <-
                 Keyword.fetch(list, :strategy),
               {:ok, config} <- Keyword.fetch(list, :config) do
            {list, [{:strategy, config} | found]}
          else
            _ -> {list, found}
          end

        node, found ->
          {node, found}
      end)

    Enum.reverse(found)
  end

  @tag :integration
  test "the snippets marked to run do, against a real BIND" do
    pods = [{"myapp-0", {10, 244, 0, 10}}, {"myapp-1", {10, 244, 0, 11}}]

    service =
      Zone.service("myapp-headless", "default", pods: pods, ports: [{"epmd", "tcp", 4369}])

    dns = DNS.start!(services: [service])

    try do
      runnable = for %{runs?: true} = snippet <- snippets(), do: snippet
      assert runnable != []

      for %{path: path, code: code} <- runnable do
        code = String.replace(code, "10.96.0.10:53", DNS.nameserver(dns))

        try do
          Code.eval_string(code)
        rescue
          error -> flunk("#{path}: #{Exception.message(error)}\nin:\n#{code}")
        end
      end
    after
      DNS.stop(dns)
    end
  end
end
