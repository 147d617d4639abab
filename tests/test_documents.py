"""Reading documents (documents.py): a BOM, blank lines, ids that are numbers or missing, titles."""

from conftest import write_file


def test_blank_lines_bom_ids_and_stdin(tmp_path):
    from prorank_edge.documents import load_documents

    path = write_file(tmp_path, "d.jsonl",
                      '\ufeff{"_id": 7, "text": "seven"}\n\n{"text": "no id", "title": "T"}\n'.encode())
    docs = load_documents(path)
    assert [(d.id, d.full_text) for d in docs] == [("7", "seven"), ("3", "T no id")]
