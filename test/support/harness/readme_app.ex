defmodule ClusterSRV.Harness.ReadmeApp do
  @moduledoc """
  A brand-new app set up from the README alone, built as a release: what a user who reads the
  README and nothing else ends up with.

      snippets = ClusterSRV.Harness.ReadmeApp.snippets!()
      bin = ClusterSRV.Harness.ReadmeApp.build!(snippets)   # .../rel/myapp/bin/myapp
      ClusterSRV.Harness.ReadmeApp.remove(bin)

  The snippets are read from the README's fenced blocks, never copied here:

    * the `deps` function of "Installation", with its `path:` pointing at this checkout;
    * the `{ClusterSRV, service: ...}` child of "Quick start, on its own" (the block's other
      children, such as `MyAppWeb.Endpoint`, stand for the user's own);
    * the `export` lines of that section's `sh` block that sets `RELEASE_DISTRIBUTION` and
      `RELEASE_NODE`, for `rel/env.sh.eex`.

  The app is `mix new <application_name> --sup` in a temporary directory, so that its release
  is named as the child's `application_name` says the nodes are; the child goes into its
  supervision tree, the `deps` function replaces the generated one, and the `export` lines end
  the `rel/env.sh.eex` that `mix release.init` writes. Nothing else: no config, no other
  module. `MIX_ENV=prod mix release` builds it, with cargo's cache shared with the project's
  (`_build/cluster_srv_cargo`, the same checkout of the crate), so that only the crate builds.
  """

  alias ClusterSRV.Harness.Watchdog

  @root Path.expand("../../..", __DIR__)
  @readme Path.join(@root, "README.md")

  defmodule Snippets do
    @moduledoc false
    # `deps`: the source of the deps function, path replaced; `child`: the ClusterSRV child's
    # source; `config`: its options; `env_sh`: the export lines.
    defstruct [:deps, :child, :config, :env_sh]
  end

  @doc """
  The README's snippets for a new app. Raises, saying what the README lacks, when one is not
  there.
  """
  def snippets!(readme \\ @readme) do
    sections = readme |> File.read!() |> sections()
    {child, config} = child!(sections)

    %Snippets{
      deps: deps!(sections),
      child: child,
      config: config,
      env_sh: env_sh!(sections)
    }
  end

  @doc """
  Makes the app and its release; returns the path of `bin/<app>`. Raises with the output of
  the step that failed.
  """
  def build!(%Snippets{} = snippets) do
    name = Keyword.fetch!(snippets.config, :application_name)
    tmp = Watchdog.tmp_dir("cluster_srv_readme_app")
    dir = Path.join(tmp, name)

    try do
      mix!(["new", name, "--sup"], tmp)
      edit!(Path.join(dir, "mix.exs"), ~r/^  defp deps do\n.*?^  end\n/ms, indent(snippets.deps))

      edit!(
        Path.join(dir, "lib/#{name}/application.ex"),
        ~r/^    children = \[\n(?:      #.*\n)*    \]\n/m,
        "    children = [\n      #{snippets.child}\n    ]\n"
      )

      mix!(["release.init"], dir)
      env_sh = Path.join(dir, "rel/env.sh.eex")
      File.write!(env_sh, File.read!(env_sh) <> "\n" <> Enum.join(snippets.env_sh, "\n") <> "\n")

      output = mix!(["release"], dir, [{"MIX_ENV", "prod"}])
      unless output =~ "Release created", do: raise("mix release said:\n#{output}")
      Path.join(dir, "_build/prod/rel/#{name}/bin/#{name}")
    rescue
      error ->
        File.rm_rf(tmp)
        reraise error, __STACKTRACE__
    end
  end

  @doc "The directory of the app whose release `build!/1` made `bin`."
  def app_dir(bin), do: bin |> Path.join("../../../../../..") |> Path.expand()

  @doc "Removes the temporary directory of an app `build!/1` made."
  def remove(bin), do: File.rm_rf(Path.dirname(app_dir(bin)))

  # The README's `## ` sections: title => text.
  defp sections(text) do
    ~r/^## (.+)\n/m
    |> Regex.split(text, include_captures: true, trim: true)
    |> Enum.drop_while(&(not String.starts_with?(&1, "## ")))
    |> Enum.chunk_every(2)
    |> Map.new(fn ["## " <> title, body] -> {String.trim(title), body} end)
  end

  defp section!(sections, title) do
    Map.get(sections, title) || raise "the README has no section \"## #{title}\""
  end

  defp blocks(text, lang),
    do: for([_, code] <- Regex.scan(~r/^```#{lang}\n(.*?)^```/ms, text), do: code)

  defp deps!(sections) do
    blocks = blocks(section!(sections, "Installation"), "elixir")

    code =
      Enum.find(blocks, &match?({:def, _, [{:deps, _, _} | _]}, Code.string_to_quoted!(&1))) ||
        raise "the README's Installation has no `def deps` block"

    {_, paths} =
      code
      |> Code.string_to_quoted!()
      |> Macro.prewalk([], fn
        {:libcluster_srv, opts} = dep, acc when is_list(opts) -> {dep, [opts[:path] | acc]}
        node, acc -> {node, acc}
      end)

    case paths do
      [path] when is_binary(path) ->
        # The literal as written, so that the rest of the block stays the README's text.
        [before, rest] = String.split(code, inspect(path), parts: 2)
        before <> inspect(@root) <> rest

      _ ->
        raise "the README's deps block has no `{:libcluster_srv, path: ...}`:\n#{code}"
    end
  end

  defp child!(sections) do
    section = section!(sections, "Quick start, on its own")

    children =
      for code <- blocks(section, "elixir"),
          {:=, _, [{:children, _, _}, children]} <- [Code.string_to_quoted!(code)],
          child <- children,
          do: child

    case for(
           {{:__aliases__, _, [:ClusterSRV]}, config} = child <- children,
           Keyword.has_key?(config, :service),
           do: {Macro.to_string(child), config}
         ) do
      [child] ->
        child

      found ->
        raise "the README's quick start has #{length(found)} `{ClusterSRV, service: ...}` children"
    end
  end

  defp env_sh!(sections) do
    section = section!(sections, "Quick start, on its own")

    lines =
      Enum.find_value(blocks(section, "sh"), fn code ->
        lines = for line <- String.split(code, "\n"), line =~ ~r/^export /, do: line

        if Enum.any?(lines, &(&1 =~ "RELEASE_DISTRIBUTION=")) and
             Enum.any?(lines, &(&1 =~ "RELEASE_NODE=")),
           do: lines
      end)

    lines ||
      raise "the README's quick start has no sh block exporting RELEASE_DISTRIBUTION and RELEASE_NODE"
  end

  defp indent(code),
    do: code |> String.split("\n", trim: true) |> Enum.map_join(&"  #{&1}\n")

  defp edit!(path, regex, replacement) do
    text = File.read!(path)
    unless text =~ regex, do: raise("#{path} is not as `mix new` writes it:\n#{text}")
    File.write!(path, Regex.replace(regex, text, fn _ -> replacement end, global: false))
  end

  defp mix!(args, dir, env \\ []) do
    env = [{"CARGO_TARGET_DIR", Path.join(@root, "_build/cluster_srv_cargo")} | env]

    case System.cmd("mix", args, cd: dir, env: env, stderr_to_stdout: true) do
      {output, 0} -> output
      {output, status} -> raise "mix #{Enum.join(args, " ")} failed (#{status}):\n#{output}"
    end
  end
end
