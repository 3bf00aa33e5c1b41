defmodule ClusterSRV.PublicAPITest do
  # What a user sees in `h` and the docs: the modules of lib/ that are not hidden, and their
  # documented functions. Everything else is an internal, @moduledoc false or @doc false.
  use ExUnit.Case, async: true

  @public %{
    ClusterSRV => ["await/2", "child_spec/1", "start_link/1", "status/1"],
    ClusterSRV.Await => ["start_link/1"],
    ClusterSRV.Record => [],
    ClusterSRV.Resolver => ["async_lookup/3", "lookup/3", "new/1"],
    ClusterSRV.Strategy => ["start_link/1"],
    Mix.Tasks.ClusterSrv.Check => []
  }

  defp shipped_modules do
    {:ok, modules} = :application.get_key(:libcluster_srv, :modules)

    for module <- modules,
        source = to_string(module.module_info(:compile)[:source]),
        String.contains?(source, "/lib/"),
        do: module
  end

  test "the public surface is these modules and functions, and no more" do
    surface =
      for module <- shipped_modules(),
          {:docs_v1, _, _, _, moduledoc, _, docs} = Code.fetch_docs(module),
          moduledoc != :hidden,
          into: %{} do
        functions =
          for {{kind, name, arity}, _, _, doc, _} <- docs,
              kind in [:function, :macro],
              doc != :hidden,
              do: "#{name}/#{arity}"

        {module, Enum.sort(functions)}
      end

    assert surface == @public
    assert map_size(surface) <= 7
    assert surface |> Map.values() |> List.flatten() |> length() <= 22
  end

  test "every option the code takes is in the options table of both moduledocs" do
    for module <- [ClusterSRV, ClusterSRV.Strategy] do
      {:docs_v1, _, _, _, %{"en" => moduledoc}, _, _} = Code.fetch_docs(module)

      for key <- ClusterSRV.Config.strategy_keys() do
        assert moduledoc =~ ~r/^\|[^|\n]*`#{key}`/m, "#{inspect(module)}'s table lacks #{key}"
      end
    end

    {:docs_v1, _, _, _, %{"en" => moduledoc}, _, _} = Code.fetch_docs(ClusterSRV)

    for key <- [:name, :topology, :connect, :disconnect, :list_nodes] do
      assert moduledoc =~ ~r/^\|[^|\n]*`#{key}`/m, "ClusterSRV's table lacks #{key}"
    end
  end

  test "every public module opens with an example to paste" do
    for module <- Map.keys(@public) do
      {:docs_v1, _, _, _, %{"en" => moduledoc}, _, _} = Code.fetch_docs(module)
      [opening | _] = String.split(moduledoc, "\n\n## ", parts: 2)
      assert opening =~ ~r/\n    \S/, "#{inspect(module)}'s moduledoc opens with no example"
    end
  end
end
