package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/spf13/cobra"
)

func init() {
	register(newImagesCmd)
	register(newImageCmd)
}

func newImagesCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List built images (same as `image ls`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return imageList(app, jsonOut)
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, `print {"images": [...]}`)
	return cmd
}

func newImageCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Manage built images",
	}
	var lsJSON bool
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List built images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return imageList(app, lsJSON)
		},
	}
	ls.Flags().BoolVar(&lsJSON, "json", false, `print {"images": [...]}`)

	var rmJSON bool
	rm := &cobra.Command{
		Use:     "rm ID...",
		Aliases: []string{"remove"},
		Short:   "Remove images by digest or unique digest prefix",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return imageRemove(app, args, rmJSON)
		},
	}
	rm.Flags().BoolVar(&rmJSON, "json", false, `print {"removed": [...], "errors": [...]}`)

	var tplJSON bool
	tpl := &cobra.Command{
		Use:   "templates",
		Short: "List the templates images are built from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ts := image.Templates()
			if tplJSON {
				return json.NewEncoder(app.Stdout).Encode(map[string]any{"templates": ts})
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TEMPLATE\tALIASES\tSUITE\tDESCRIPTION")
			for _, t := range ts {
				suite := t.Suite
				if suite == "" {
					suite = "-"
				}
				al := strings.Join(t.Aliases, ",")
				if al == "" {
					al = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, al, suite, t.Description)
			}
			return tw.Flush()
		},
	}
	tpl.Flags().BoolVar(&tplJSON, "json", false, `print {"templates": [...]}`)

	cmd.AddCommand(ls, rm, tpl, newImagePullCmd(app), newImageImportCmd(app))
	return cmd
}

func imageList(app *App, jsonOut bool) error {
	rt, err := app.runtime()
	if err != nil {
		return err
	}
	arts, err := rt.Images()
	if err != nil {
		return err
	}
	if jsonOut {
		return json.NewEncoder(app.Stdout).Encode(map[string]any{"images": arts})
	}
	tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE ID\tNAME\tTEMPLATE\tPROFILE\tSIZE\tCREATED\tSOURCE")
	for _, a := range arts {
		name := a.Name
		if name == "" {
			name = "-"
		}
		src := a.Source
		if a.OCI != nil {
			src += "@" + a.OCI.Digest
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ShortID(), name, a.Template, a.Profile,
			imgHumanBytes(a.Size), imgAgo(a.Created), src)
	}
	return tw.Flush()
}

func imgAgo(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	default:
		return t.Local().Format("2006-01-02")
	}
}

func imageRemove(app *App, ids []string, jsonOut bool) error {
	type rmErr struct {
		ID    string `json:"id"`
		Error string `json:"error"`
	}
	rt, err := app.runtime()
	if err != nil {
		return err
	}
	removed := []string{}
	var errs []rmErr
	for _, id := range ids {
		a, err := rt.RemoveImage(id)
		if err != nil {
			errs = append(errs, rmErr{ID: id, Error: err.Error()})
			if !jsonOut {
				fmt.Fprintf(app.Stderr, "mvmctl: image rm %s: %v\n", id, err)
			}
			continue
		}
		removed = append(removed, a.Digest)
		if !jsonOut {
			fmt.Fprintf(app.Stdout, "removed %s\n", a.Digest)
		}
	}
	if jsonOut {
		if errs == nil {
			errs = []rmErr{}
		}
		if err := json.NewEncoder(app.Stdout).Encode(map[string]any{"removed": removed, "errors": errs}); err != nil {
			return err
		}
	}
	if len(errs) > 0 {
		return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d image(s) not removed", len(errs), len(ids)), Silent: !jsonOut, JSONDone: jsonOut}
	}
	return nil
}
