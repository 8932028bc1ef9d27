package decl

import (
	"context"
	"testing"
)

// FuzzExtract feeds arbitrary source to both extractors: no panic, no
// hang, and (since nothing is ever executed) no side effect is possible.
func FuzzExtract(f *testing.F) {
	f.Add([]byte(issueDecl), true)
	f.Add([]byte("import mvm\n@mvm.app(image=mvm.python_image('3.13'), env={'A': mvm.secret('x')}, network=mvm.network(mode='allow', allow=['a.b:1'], ports=[1, {'guest': 2}]))\ndef f(): pass\n"), true)
	f.Add([]byte("import * as mvm from 'mvm-sdk';\nexport const w = mvm.app({image: mvm.node_image('20'), source: mvm.local_path('.', {include: ['**']})})(async () => 'ok');\n"), false)
	f.Add([]byte("@mvm.app(name='\\x41\\u00e9\\N{DASH}', image=mvm.template(\"\"\"py\"\"\" r'x'))\ndef f(): pass"), true)
	f.Add([]byte("export const w = mvm.app({name: `a\\u{1F600}`})(function () {})"), false)
	f.Fuzz(func(t *testing.T, src []byte, py bool) {
		name := "a.ts"
		if py {
			name = "a.py"
		}
		r, err := CompileSource(context.Background(), name, src)
		if err == nil && r.Workload == nil {
			t.Fatal("no error and no workload")
		}
	})
}
